// chatservice Playground: chats through the service's own OpenAI-compatible face.
//
// - Config: GET playground/config.json (relative to the page) -> {route, auth_mode, ...}.
// - Models: GET {route}/v1/models fills the model <select>.
// - Chat: POST {route}/v1/chat/completions with stream: true; the Server-Sent Events are read
//   from fetch's ReadableStream and every delta is appended with textContent (never HTML,
//   so a model's "<script>" is shown, not run). Stop aborts the fetch; the server then closes
//   the upstream request.
// - The conversation is the `messages` array below, sent whole every turn.
// - AUTH_MODE simple: "Authorization: Bearer <token>"; normal: headers uuid and
//   token = hex SHA-256(token + uuid), a fresh uuid per request (chatservice/auth.py).
//   The token lives in sessionStorage only.
// - Errors show the service's own localized message ({"error": {"message"}}); the browser
//   sends Accept-Language itself. The page's labels are chosen the same way, below.
"use strict";

(() => {
  const LABELS = {
    en: {
      title: "Playground", settings: "Settings", newChat: "New chat", model: "Model",
      serverDefault: "Server default", system: "System prompt",
      systemPlaceholder: "Optional: how the assistant should behave", temperature: "Temperature",
      maxTokens: "Max tokens",
      placeholder: "Ask a question…", hint: "Enter to send, Shift+Enter for a new line",
      send: "Send", stop: "Stop", you: "You", assistant: "Assistant", error: "Error",
      stopped: "Stopped",
      empty: "Ask a question to start. The conversation stays in this page until you start a new chat.",
      tokenTitle: "Access token",
      tokenPrompt: "This server asks for an access token. It is kept in this browser tab only.",
      tokenSave: "Continue", tokenForget: "Forget token",
      network: "Cannot reach the service.", cutOff: "The answer was cut off.",
      insecure: "This page needs a secure context (https, or localhost) to sign requests.",
    },
    zh_CN: {
      title: "演练场", settings: "设置", newChat: "新对话", model: "模型",
      serverDefault: "服务器默认", system: "系统提示词",
      systemPlaceholder: "可选：助手应如何表现", temperature: "温度",
      maxTokens: "最大 Token 数", placeholder: "输入问题……",
      hint: "Enter 发送，Shift+Enter 换行",
      send: "发送", stop: "停止", you: "你", assistant: "助手", error: "错误",
      stopped: "已停止",
      empty: "输入问题开始对话。开始新对话之前，对话内容会保留在此页面中。",
      tokenTitle: "访问令牌",
      tokenPrompt: "此服务器需要访问令牌。令牌只保存在当前浏览器标签页中。",
      tokenSave: "继续", tokenForget: "清除令牌",
      network: "无法连接到服务。", cutOff: "回答被中断了。",
      insecure: "此页面需要安全上下文（https 或 localhost）才能为请求签名。",
    },
    zh_TW: {
      title: "演練場", settings: "設定", newChat: "新對話", model: "模型",
      serverDefault: "伺服器預設", system: "系統提示詞",
      systemPlaceholder: "選填：助理應如何表現", temperature: "溫度",
      maxTokens: "最大 Token 數", placeholder: "輸入問題……",
      hint: "Enter 送出，Shift+Enter 換行",
      send: "送出", stop: "停止", you: "你", assistant: "助理", error: "錯誤",
      stopped: "已停止",
      empty: "輸入問題開始對話。開始新對話之前，對話內容會保留在此頁面中。",
      tokenTitle: "存取權杖",
      tokenPrompt: "此伺服器需要存取權杖。權杖只儲存在目前的瀏覽器分頁中。",
      tokenSave: "繼續", tokenForget: "清除權杖",
      network: "無法連線到服務。", cutOff: "回答被中斷了。",
      insecure: "此頁面需要安全環境（https 或 localhost）才能為請求簽章。",
    },
    ru: {
      title: "Песочница", settings: "Настройки", newChat: "Новый чат", model: "Модель",
      serverDefault: "По умолчанию на сервере", system: "Системный промпт",
      systemPlaceholder: "Необязательно: как должен вести себя ассистент", temperature: "Температура",
      maxTokens: "Макс. токенов",
      placeholder: "Задайте вопрос…", hint: "Enter — отправить, Shift+Enter — новая строка",
      send: "Отправить", stop: "Стоп", you: "Вы", assistant: "Ассистент", error: "Ошибка",
      stopped: "Остановлено",
      empty: "Задайте вопрос, чтобы начать. Разговор хранится на этой странице, пока вы не начнёте новый чат.",
      tokenTitle: "Токен доступа",
      tokenPrompt: "Этот сервер требует токен доступа. Он хранится только в этой вкладке браузера.",
      tokenSave: "Продолжить", tokenForget: "Забыть токен",
      network: "Не удаётся связаться с сервисом.", cutOff: "Ответ оборвался.",
      insecure: "Для подписи запросов странице нужен защищённый контекст (https или localhost).",
    },
  };
  const TOKEN_KEY = "chatservice.playground.token";
  const $ = (id) => document.getElementById(id);

  const state = {
    config: { route: "", auth_mode: "none", default_model: "", default_lang: "en" },
    lang: "en",
    messages: [], // the conversation: {role, content} objects, sent whole every turn
    controller: null, // AbortController of the answer being streamed
  };

  // The same rule as the service's i18n.normalize_language, so labels and messages agree.
  function normalizeLanguage(tag) {
    const parts = String(tag || "").toLowerCase().replace(/-/g, "_").split("_").filter(Boolean);
    if (parts[0] === "zh") {
      return parts.slice(1).some((p) => ["tw", "hk", "mo", "hant"].includes(p)) ? "zh_TW" : "zh_CN";
    }
    return parts[0] === "en" || parts[0] === "ru" ? parts[0] : null;
  }

  function pickLanguage(fallback) {
    const tags = navigator.languages && navigator.languages.length
      ? navigator.languages : [navigator.language];
    for (const tag of tags) {
      const lang = normalizeLanguage(tag);
      if (lang) return lang;
    }
    return LABELS[fallback] ? fallback : "en";
  }

  function t(key) {
    return LABELS[state.lang][key] || LABELS.en[key];
  }

  function applyLabels() {
    document.documentElement.lang = state.lang.replace("_", "-");
    document.title = `${t("title")} · chatservice`;
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
      el.placeholder = t(el.dataset.i18nPlaceholder);
    }
  }

  // --- talking to the service ------------------------------------------------------------

  class ServiceError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function sha256Hex(text) {
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY) || "";
    // keys: the client key goes as a bearer too (AUTH_MODE=keys accepts it on every face).
    if (state.config.auth_mode === "simple" || state.config.auth_mode === "keys") {
      return { Authorization: `Bearer ${token}` };
    }
    if (state.config.auth_mode === "normal") {
      if (!window.isSecureContext || !crypto.subtle) throw new ServiceError(t("insecure"), 0);
      const uuid = crypto.randomUUID(); // used once: the service refuses a replayed uuid
      return { uuid, token: await sha256Hex(token + uuid) };
    }
    return {};
  }

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}), ...(await authHeaders()) };
    let response;
    try {
      response = await fetch(`${state.config.route}/v1${path}`, { ...options, headers });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ServiceError(t("network"), 0);
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  // The service's localized message from OpenAI's error shape, else the HTTP status.
  async function errorOf(response) {
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON: keep the status */ }
    if (response.status === 401) askForToken();
    return new ServiceError(message, response.status);
  }

  // Calls onEvent(parsed JSON) for each "data:" line; resolves true at "data: [DONE]".
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffer += decoder.decode(value, { stream: true });
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        for (const line of lines) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return true;
          onEvent(JSON.parse(data));
        }
      }
    } finally {
      reader.cancel().catch(() => {}); // an error event ends the answer: let go of the body
    }
  }

  // --- the conversation on screen ----------------------------------------------------------

  function addMessage(kind, text) {
    $("empty").hidden = true;
    const item = document.createElement("div");
    item.className = `msg ${kind}`;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = t(kind === "user" ? "you" : kind === "error" ? "error" : "assistant");
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.append(who, body);
    $("log").append(item);
    scrollDown(true);
    return item;
  }

  function scrollDown(force) {
    const log = $("log");
    if (force || log.scrollHeight - log.scrollTop - log.clientHeight < 80) {
      log.scrollTop = log.scrollHeight;
    }
  }

  function setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
  }

  function clearConversation() {
    if (state.controller) {
      // Forgotten first, so the aborted answer does not join the new conversation.
      const controller = state.controller;
      state.controller = null;
      controller.abort();
      setBusy(false);
    }
    state.messages = [];
    for (const item of $("log").querySelectorAll(".msg")) item.remove();
    $("empty").hidden = false;
    $("input").focus();
  }

  function requestBody(question) {
    const body = { messages: [], stream: true };
    const system = $("system").value.trim();
    if (system) body.messages.push({ role: "system", content: system });
    body.messages.push(...state.messages, question);
    if ($("model").value) body.model = $("model").value;
    body.temperature = Number($("temperature").value);
    const maxTokens = parseInt($("max-tokens").value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    return body;
  }

  async function ask(text) {
    const question = { role: "user", content: text };
    const body = requestBody(question);
    const userItem = addMessage("user", text);
    const answerItem = addMessage("assistant", "");
    const answerText = answerItem.querySelector(".text");
    answerItem.classList.add("pending");
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let answer = "";
    try {
      const response = await api("/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      const finished = await readEvents(response, (event) => {
        if (event.error) throw new ServiceError(event.error.message || t("error"), 0);
        const choice = event.choices && event.choices[0];
        const delta = choice && choice.delta && choice.delta.content;
        if (delta) {
          answer += delta;
          answerText.textContent = answer;
          answerItem.classList.remove("pending");
          scrollDown(false);
        }
      });
      if (!finished) throw new ServiceError(t("cutOff"), 0);
      state.messages.push(question, { role: "assistant", content: answer });
    } catch (err) {
      if (err.name === "AbortError" && answer) {
        // What arrived before Stop stays part of the conversation, as in other chat UIs.
        if (controller === state.controller) {
          state.messages.push(question, { role: "assistant", content: answer });
        }
        answerItem.classList.add("stopped");
        answerItem.dataset.note = t("stopped");
      } else if (err.name === "AbortError") {
        // Stopped before the first word: nothing to keep.
        userItem.classList.add("failed");
        answerItem.remove();
      } else {
        // The failed turn is not part of the conversation: its text goes back to the input.
        userItem.classList.add("failed");
        if (answer) answerItem.classList.add("failed");
        else answerItem.remove();
        addMessage("error", err.message);
        if (!$("input").value) {
          $("input").value = text;
          resizeInput();
        }
      }
    } finally {
      answerItem.classList.remove("pending");
      if (state.controller === controller) {
        state.controller = null;
        setBusy(false);
      }
    }
  }

  // --- models and token --------------------------------------------------------------------

  async function loadModels() {
    const select = $("model");
    let ids = [];
    try {
      const response = await api("/models");
      const body = await response.json();
      ids = (body.data || []).map((m) => m.id).filter((id) => typeof id === "string");
    } catch (err) {
      addMessage("error", err.message); // a 401 has also brought the token form back
    }
    select.replaceChildren();
    if (ids.length) {
      for (const id of ids) select.append(new Option(id, id));
      const preferred = state.config.default_model;
      select.value = ids.includes(preferred) ? preferred : ids[0];
    } else {
      select.append(new Option(`${t("serverDefault")} (${state.config.default_model})`, ""));
    }
    document.body.dataset.ready = "true";
  }

  function askForToken() {
    if (state.config.auth_mode === "none") return;
    sessionStorage.removeItem(TOKEN_KEY);
    $("forget-token").hidden = true;
    $("token-form").hidden = false;
    $("token").focus();
  }

  function tokenEntered(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("token-form").hidden = true;
    $("forget-token").hidden = false;
    loadModels();
  }

  // --- wiring ------------------------------------------------------------------------------

  function bind() {
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("input").value.trim();
      if (!text || state.controller) return;
      if (state.config.auth_mode !== "none" && !sessionStorage.getItem(TOKEN_KEY)) {
        askForToken();
        return;
      }
      $("input").value = "";
      resizeInput();
      ask(text);
    });
    $("input").addEventListener("keydown", (event) => {
      // isComposing: Enter also confirms a Chinese input method's candidate.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("input").addEventListener("input", resizeInput);
    $("stop").addEventListener("click", () => state.controller && state.controller.abort());
    $("clear").addEventListener("click", clearConversation);
    $("temperature").addEventListener("input", () => {
      $("temperature-value").textContent = Number($("temperature").value).toFixed(1);
    });
    $("settings-toggle").addEventListener("click", () => {
      const open = $("settings").classList.toggle("open");
      $("settings-toggle").setAttribute("aria-expanded", String(open));
    });
    $("token-form").addEventListener("submit", tokenEntered);
    $("forget-token").addEventListener("click", askForToken);
  }

  function resizeInput() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  async function start() {
    state.lang = pickLanguage("en");
    applyLabels();
    bind();
    try {
      const response = await fetch("playground/config.json");
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      state.config = await response.json();
    } catch (_) {
      addMessage("error", t("network"));
      return;
    }
    // Without a language of its own in the browser's list, follow the server's CHAT_LANG,
    // as the service's messages do.
    state.lang = pickLanguage(state.config.default_lang);
    applyLabels();
    if (state.config.auth_mode !== "none" && !sessionStorage.getItem(TOKEN_KEY)) {
      askForToken();
      return;
    }
    $("forget-token").hidden = state.config.auth_mode === "none";
    await loadModels();
  }

  start();
})();
