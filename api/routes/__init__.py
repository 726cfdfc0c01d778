"""The API's routes by area, each an `APIRouter` built over the app's `ApiState` (api/app.py includes them).

    probes    GET /healthz, /readyz, /metrics
    answers   POST /v1/answer
    products  GET /v1/products/{uid}
    admin     POST /v1/index/update (the admin key)

The OpenAI-compatible routes (/v1/models, /v1/chat/completions) are in api/openai_compat.py, the chat
page in api/web.py. Routes share api/state.py and never import api.app.
"""
