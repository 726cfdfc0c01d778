// The chat page of `rag serve` (api/web.py serves it; no framework, no build step).
//
// One rule holds everywhere below: a string that comes from the catalog, the model or the server
// goes into the page as text (textContent, createTextNode), never as HTML. The catalog holds raw
// markup, and an answer quotes it. The page's Content-Security-Policy (no inline script) is the
// second fence, not the first.
"use strict";

(() => {
  const KEY_STORE = "amazontitles-rag.api-key"; // sessionStorage: this tab only
  const $ = (id) => document.getElementById(id);
  const ui = {
    conversation: $("conversation"), intro: $("intro"), announcer: $("announcer"), status: $("server-status"),
    form: $("ask-form"), question: $("question"), k: $("k"), send: $("send"), stop: $("stop"),
    newChat: $("new-chat"), forgetKey: $("forget-key"),
    keyForm: $("key-form"), keyInput: $("api-key"), keyReason: $("key-reason"),
    dialog: $("product"), productTitle: $("product-title"), productUid: $("product-uid"),
    productVersion: $("product-version"), productContent: $("product-content"), productClose: $("product-close"),
  };
  const settings = { model: "amazontitles-rag", default_k: 5, max_k: 20, max_messages: 64, key_required: false };

  let history = []; // completed turns, oldest first: {role: "user"|"assistant", content}
  let turnCount = 0;
  let busy = null; // the AbortController of the answer being streamed
  let pendingQuestion = null; // asked while the key was missing or wrong; sent again once a key is given
  let productOpener = null;

  // ------------------------------------------------------------------ small helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function storedKey() {
    try { return sessionStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
  }

  function requestHeaders(json) {
    const headers = { Accept: json ? "text/event-stream, application/json" : "application/json" };
    if (json) headers["Content-Type"] = "application/json";
    const key = storedKey();
    if (key) headers.Authorization = "Bearer " + key;
    return headers;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return String(body.error.message);
    } catch { /* not JSON */ }
    return "HTTP " + response.status;
  }

  function announce(text) {
    ui.announcer.textContent = text;
  }

  function ms(value) {
    return Math.round(value) + " ms";
  }

  function scrollToEnd() {
    window.scrollTo({ top: document.documentElement.scrollHeight });
  }

  // ------------------------------------------------------------------ server status and settings

  async function loadSettings() {
    try {
      const response = await fetch("/web/settings.json", { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      Object.assign(settings, await response.json());
    } catch { return; }
    ui.k.max = String(settings.max_k);
    ui.k.value = String(Math.min(settings.default_k, settings.max_k));
    if (settings.max_question_chars) ui.question.maxLength = settings.max_question_chars;
    if (settings.key_required && !storedKey()) askForKey("This server needs an API key.", false);
    ui.forgetKey.hidden = !storedKey();
  }

  async function checkReady() {
    let retry = 0;
    try {
      const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
      const body = await response.json();
      if (response.ok) {
        const rows = typeof body.rows === "number" ? body.rows.toLocaleString("en") + " rows" : "";
        ui.status.textContent = ["ready", rows, body.generator, body.index_version && "index " + body.index_version]
          .filter(Boolean).join(" · ");
        ui.status.classList.remove("bad");
      } else {
        ui.status.textContent = "not ready: " + (body.reason || response.status);
        ui.status.classList.add("bad");
        retry = 2000;
      }
    } catch {
      ui.status.textContent = "the server does not answer";
      ui.status.classList.add("bad");
      retry = 3000;
    }
    if (retry) setTimeout(checkReady, retry);
  }

  // ------------------------------------------------------------------ API key

  function askForKey(reason, wrong) {
    ui.keyReason.textContent = reason;
    ui.keyForm.hidden = false;
    ui.keyInput.value = "";
    ui.keyInput.setAttribute("aria-invalid", wrong ? "true" : "false");
    ui.keyInput.focus();
  }

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = ui.keyInput.value.trim();
    if (!key) return;
    try { sessionStorage.setItem(KEY_STORE, key); } catch { /* storage disabled: nothing to keep it in */ }
    ui.keyInput.value = "";
    ui.keyForm.hidden = true;
    ui.forgetKey.hidden = false;
    ui.question.focus();
    if (pendingQuestion !== null) {
      const question = pendingQuestion;
      pendingQuestion = null;
      ask(question);
    }
  });

  ui.forgetKey.addEventListener("click", () => {
    try { sessionStorage.removeItem(KEY_STORE); } catch { /* nothing stored */ }
    ui.forgetKey.hidden = true;
    if (settings.key_required) askForKey("Key forgotten. This server needs an API key.", false);
    else ui.question.focus();
  });

  // ------------------------------------------------------------------ one turn

  function addTurn(question) {
    const id = ++turnCount;
    const article = el("article", "turn");
    const user = el("div", "msg user");
    user.append(el("p", "who", "You"), el("p", "text", question));
    const assistant = el("div", "msg assistant");
    assistant.setAttribute("aria-busy", "true");
    assistant.dataset.state = "streaming";
    const text = el("p", "text answer-text");
    assistant.append(el("p", "who", "Answer"), text);
    article.append(user, assistant);
    ui.intro.hidden = true;
    ui.conversation.append(article);
    scrollToEnd();
    return { id, article, assistant, text };
  }

  // Append `chunk` to `parent`, turning [n] (n a source of this answer) into a link to source card n.
  function appendCited(parent, chunk, turn, sourceCount) {
    const pattern = /\[(\d{1,3})\]/g;
    let at = 0;
    for (const match of chunk.matchAll(pattern)) {
      const n = Number(match[1]);
      if (n < 1 || n > sourceCount) continue;
      if (match.index > at) parent.append(document.createTextNode(chunk.slice(at, match.index)));
      const link = el("a", "cite", "[" + n + "]");
      link.href = "#t" + turn.id + "-src-" + n;
      link.setAttribute("aria-label", "source " + n);
      link.addEventListener("click", (event) => {
        event.preventDefault();
        const card = document.getElementById("t" + turn.id + "-src-" + n);
        if (!card) return;
        card.scrollIntoView({ block: "nearest" });
        card.focus();
        card.classList.add("lit");
        setTimeout(() => card.classList.remove("lit"), 1500);
      });
      parent.append(link);
      at = match.index + match[0].length;
    }
    if (at < chunk.length) parent.append(document.createTextNode(chunk.slice(at)));
  }

  // The final answer: citations as links, the sentences the grounding check flagged in <mark>.
  function renderAnswer(turn, text, unsupported, sourceCount) {
    const ranges = [];
    for (const sentence of unsupported) {
      const wanted = String(sentence).trim();
      if (!wanted) continue;
      let at = text.indexOf(wanted);
      while (at >= 0 && ranges.some(([a, b]) => at < b && at + wanted.length > a)) at = text.indexOf(wanted, at + 1);
      if (at >= 0) ranges.push([at, at + wanted.length]);
    }
    ranges.sort((x, y) => x[0] - y[0]);
    const node = turn.text;
    node.replaceChildren();
    let at = 0;
    for (const [start, end] of ranges) {
      appendCited(node, text.slice(at, start), turn, sourceCount);
      const mark = el("mark", "unsupported");
      mark.title = "No source supports this sentence";
      appendCited(mark, text.slice(start, end), turn, sourceCount);
      mark.append(el("span", "visually-hidden", " (not supported by a source)"));
      node.append(mark);
      at = end;
    }
    appendCited(node, text.slice(at), turn, sourceCount);
    return ranges.length;
  }

  function renderSources(turn, sources) {
    const list = el("ol", "sources");
    list.setAttribute("aria-label", "Sources");
    sources.forEach((source, i) => {
      const n = i + 1;
      const card = el("li", "source-card");
      card.id = "t" + turn.id + "-src-" + n;
      card.tabIndex = -1;
      const heading = el("h3");
      const title = el("button", "source-title", source.title || "(untitled)");
      title.type = "button";
      title.setAttribute("aria-haspopup", "dialog");
      title.addEventListener("click", () => openProduct(String(source.uid), title));
      heading.append(el("span", "source-num", "[" + n + "]"), title);
      const score = Number(source.score);
      const meta = el("p", "source-meta", "uid " + source.uid + " · score " + (Number.isFinite(score) ? score.toFixed(3) : "?"));
      card.append(heading, meta);
      if (source.snippet) card.append(el("p", "source-snippet", source.snippet));
      list.append(card);
    });
    turn.assistant.append(list);
  }

  function finishTurn(turn, text, final, timing) {
    const rag = (final && final.rag) || {};
    const sources = (final && Array.isArray(final.sources)) ? final.sources : [];
    const flagged = renderAnswer(turn, text, Array.isArray(rag.unsupported_sentences) ? rag.unsupported_sentences : [],
                                 sources.length);
    if (rag.found === false) {
      turn.assistant.classList.add("not-found");
      const notice = el("div", "notice");
      notice.setAttribute("role", "note");
      notice.append(el("strong", null, "No product found."),
                    document.createTextNode("Nothing in the catalog matches this question. Try the exact title, or describe the product differently."));
      turn.assistant.append(notice);
    } else if (flagged > 0) {
      const note = el("p", "note");
      note.append(document.createTextNode(flagged === 1 ? "1 sentence " : flagged + " sentences "),
                  el("mark", null, "marked like this"),
                  document.createTextNode(" could not be matched to any source by the grounding check."));
      turn.assistant.append(note);
    }
    if (sources.length) renderSources(turn, sources);
    const total = timing.done - timing.started;
    const parts = [];
    if (timing.first !== null) parts.push("first words after " + ms(timing.first - timing.started));
    parts.push("complete after " + ms(total));
    if (rag.generator) parts.push(rag.generator);
    turn.assistant.append(el("p", "timing", parts.join(" · ")));
    turn.assistant.dataset.totalMs = String(Math.round(total));
    if (timing.first !== null) turn.assistant.dataset.ttftMs = String(Math.round(timing.first - timing.started));
    turn.assistant.dataset.pieces = String(timing.pieces);
    turn.assistant.dataset.state = "done";
    turn.assistant.setAttribute("aria-busy", "false");
    announce(rag.found === false ? "No product found." : "Answer complete, " + sources.length + " sources.");
  }

  function failTurn(turn, message, state) {
    turn.assistant.setAttribute("aria-busy", "false");
    turn.assistant.dataset.state = state;
    turn.assistant.append(el("p", "error", message));
    announce(message);
  }

  // Server-sent events: yields the data of each event ("[DONE]" included) as it arrives.
  async function* sseData(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
        if (data) yield data;
      }
    }
  }

  function setBusy(controller) {
    busy = controller;
    ui.send.disabled = controller !== null;
    ui.stop.hidden = controller === null;
  }

  async function ask(question) {
    const k = Number(ui.k.value) || settings.default_k;
    let earlier = history.slice(-(settings.max_messages - 1));
    if (earlier.length && earlier[0].role !== "user") earlier = earlier.slice(1);
    const turn = addTurn(question);
    const controller = new AbortController();
    setBusy(controller);
    const timing = { started: performance.now(), first: null, done: 0, pieces: 0 };
    let text = "";
    let final = null;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: requestHeaders(true), signal: controller.signal,
        body: JSON.stringify({ model: settings.model, stream: true, k, messages: [...earlier, { role: "user", content: question }] }),
      });
      if (response.status === 401) {
        turn.article.remove();
        pendingQuestion = question;
        askForKey(storedKey() ? "The server refused this key: " + (await errorMessage(response)) : "This server needs an API key.", Boolean(storedKey()));
        return;
      }
      if (!response.ok) {
        failTurn(turn, await errorMessage(response), "error");
        return;
      }
      for await (const data of sseData(response.body)) {
        if (data === "[DONE]") break;
        let chunk;
        try { chunk = JSON.parse(data); } catch { continue; }
        if (chunk.error) {
          failTurn(turn, String(chunk.error.message || "the answer failed"), "error");
          return;
        }
        const choice = Array.isArray(chunk.choices) ? chunk.choices[0] : null;
        const piece = choice && choice.delta ? choice.delta.content : "";
        if (piece) {
          if (timing.first === null) timing.first = performance.now();
          timing.pieces += 1;
          text += piece;
          turn.text.textContent = text;
          scrollToEnd();
        }
        if (chunk.sources || chunk.rag) final = chunk;
      }
      timing.done = performance.now();
      if (final === null) {
        failTurn(turn, "the answer ended before the server sent its sources", "error");
        return;
      }
      finishTurn(turn, text, final, timing);
      history.push({ role: "user", content: question }, { role: "assistant", content: text });
    } catch (error) {
      if (error && error.name === "AbortError") failTurn(turn, "Stopped.", "stopped");
      else failTurn(turn, "The server could not be reached: " + (error && error.message ? error.message : error), "error");
    } finally {
      if (busy === controller) setBusy(null);
      scrollToEnd();
    }
  }

  // ------------------------------------------------------------------ product dialog

  async function openProduct(uid, opener) {
    productOpener = opener;
    ui.productTitle.textContent = "Loading…";
    ui.productUid.textContent = uid;
    ui.productVersion.textContent = "";
    ui.productContent.textContent = "";
    if (!ui.dialog.open) ui.dialog.showModal();
    ui.productClose.focus();
    try {
      const response = await fetch("/v1/products/" + encodeURIComponent(uid), { headers: requestHeaders(false) });
      if (response.status === 401) {
        ui.dialog.close();
        askForKey("This server needs an API key.", Boolean(storedKey()));
        return;
      }
      if (!response.ok) {
        ui.productTitle.textContent = "Product not available";
        ui.productContent.textContent = await errorMessage(response);
        return;
      }
      const row = await response.json();
      ui.productTitle.textContent = row.title || "(untitled)";
      ui.productUid.textContent = row.uid;
      ui.productVersion.textContent = row.index_version || "";
      ui.productContent.textContent = row.content || "(the catalog has no description of this product)";
    } catch (error) {
      ui.productTitle.textContent = "Product not available";
      ui.productContent.textContent = "The server could not be reached: " + (error && error.message ? error.message : error);
    }
  }

  ui.productClose.addEventListener("click", () => ui.dialog.close());
  // Back to the title that opened the dialog, unless focus has moved on meanwhile ("close" fires a
  // task after the dialog closed, and the user may be typing in the question box by then).
  ui.dialog.addEventListener("close", () => {
    const active = document.activeElement;
    const unclaimed = !active || active === document.body || ui.dialog.contains(active);
    if (productOpener && productOpener.isConnected && unclaimed) productOpener.focus();
    productOpener = null;
  });

  // ------------------------------------------------------------------ the form

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (busy) return;
    if (!ui.form.reportValidity()) return;
    const question = ui.question.value.trim();
    if (!question) return;
    ui.question.value = "";
    ask(question);
  });

  ui.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ui.form.requestSubmit();
    }
  });

  ui.stop.addEventListener("click", () => { if (busy) busy.abort(); });

  ui.newChat.addEventListener("click", () => {
    if (busy) busy.abort();
    history = [];
    ui.conversation.replaceChildren();
    ui.intro.hidden = false;
    announce("New conversation.");
    ui.question.focus();
  });

  ui.question.focus();
  loadSettings();
  checkReady();
})();
