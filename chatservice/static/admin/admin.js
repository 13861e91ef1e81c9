// chatservice admin page: client keys and usage, through the admin API next to this page.
//
// - Sign in: the ADMIN_TOKEN, kept in sessionStorage (this tab only), sent as
//   "Authorization: Bearer <token>" to client-keys and usage (relative to {ROUTE}/admin/).
// - Keys: POST client-keys creates one and shows it once (with a copy button); GET lists them
//   masked; PATCH {"enabled": ...} disables or enables; DELETE removes (a second click
//   confirms).
// - Usage: GET usage?from&to -> rows per day, key and model; Chart.js draws tokens per day
//   stacked by key, the table sums them by model.
// - Every text from the server is set with textContent; errors show the server's localized
//   message. Labels follow the browser's language, as the service's messages do.
"use strict";

(() => {
  const LABELS = {
    en: {
      title: "Admin", signOut: "Sign out", tokenTitle: "Admin token",
      tokenPrompt: "The ADMIN_TOKEN of this server. It is kept in this browser tab only.",
      signIn: "Sign in", newKey: "New key", name: "Name", models: "Models",
      rpm: "Requests per minute", tpm: "Tokens per minute", budget: "Token budget",
      dailyBudget: "Tokens per day", monthlyBudget: "Tokens per month", expires: "Expires",
      create: "Create", shownOnce: "Copy this key now: it is not shown again.", copy: "Copy",
      copied: "Copied", keys: "Keys", key: "Key", limits: "Limits", spent: "Spent",
      state: "State", noKeys: "No keys yet.", enabled: "enabled", disabled: "disabled",
      disable: "Disable", enable: "Enable", remove: "Delete", confirm: "Really delete?",
      usage: "Usage", from: "From", to: "To", refresh: "Refresh",
      tokensPerDay: "Tokens per day, by key", byModel: "By model", model: "Model",
      requests: "Requests", promptTokens: "Prompt tokens", completionTokens: "Completion tokens",
      errors: "Errors", cost: "Cost", none: "none", total: "total", day: "day", month: "month",
      network: "Cannot reach the service.",
    },
    zh_CN: {
      title: "管理", signOut: "退出", tokenTitle: "管理令牌",
      tokenPrompt: "此服务器的 ADMIN_TOKEN。它只保存在当前浏览器标签页中。",
      signIn: "登录", newKey: "新建密钥", name: "名称", models: "模型",
      rpm: "每分钟请求数", tpm: "每分钟 Token 数", budget: "Token 预算",
      dailyBudget: "每日 Token 数", monthlyBudget: "每月 Token 数", expires: "过期时间",
      create: "创建", shownOnce: "请立即复制此密钥：它不会再次显示。", copy: "复制",
      copied: "已复制", keys: "密钥", key: "密钥", limits: "限制", spent: "已用",
      state: "状态", noKeys: "还没有密钥。", enabled: "已启用", disabled: "已停用",
      disable: "停用", enable: "启用", remove: "删除", confirm: "确定删除？",
      usage: "用量", from: "从", to: "到", refresh: "刷新",
      tokensPerDay: "每日 Token 数（按密钥）", byModel: "按模型", model: "模型",
      requests: "请求数", promptTokens: "提示 Token", completionTokens: "补全 Token",
      errors: "错误", cost: "费用", none: "无", total: "总计", day: "日", month: "月",
      network: "无法连接到服务。",
    },
    zh_TW: {
      title: "管理", signOut: "登出", tokenTitle: "管理權杖",
      tokenPrompt: "此伺服器的 ADMIN_TOKEN。它只儲存在目前的瀏覽器分頁中。",
      signIn: "登入", newKey: "新增金鑰", name: "名稱", models: "模型",
      rpm: "每分鐘請求數", tpm: "每分鐘 Token 數", budget: "Token 預算",
      dailyBudget: "每日 Token 數", monthlyBudget: "每月 Token 數", expires: "到期時間",
      create: "建立", shownOnce: "請立即複製此金鑰：它不會再次顯示。", copy: "複製",
      copied: "已複製", keys: "金鑰", key: "金鑰", limits: "限制", spent: "已用",
      state: "狀態", noKeys: "還沒有金鑰。", enabled: "已啟用", disabled: "已停用",
      disable: "停用", enable: "啟用", remove: "刪除", confirm: "確定刪除？",
      usage: "用量", from: "從", to: "到", refresh: "重新整理",
      tokensPerDay: "每日 Token 數（依金鑰）", byModel: "依模型", model: "模型",
      requests: "請求數", promptTokens: "提示 Token", completionTokens: "補全 Token",
      errors: "錯誤", cost: "費用", none: "無", total: "總計", day: "日", month: "月",
      network: "無法連線到服務。",
    },
    ru: {
      title: "Администрирование", signOut: "Выйти", tokenTitle: "Токен администратора",
      tokenPrompt: "ADMIN_TOKEN этого сервера. Он хранится только в этой вкладке браузера.",
      signIn: "Войти", newKey: "Новый ключ", name: "Имя", models: "Модели",
      rpm: "Запросов в минуту", tpm: "Токенов в минуту", budget: "Бюджет токенов",
      dailyBudget: "Токенов в день", monthlyBudget: "Токенов в месяц", expires: "Истекает",
      create: "Создать", shownOnce: "Скопируйте ключ сейчас: он больше не будет показан.",
      copy: "Копировать", copied: "Скопировано", keys: "Ключи", key: "Ключ",
      limits: "Лимиты", spent: "Израсходовано", state: "Состояние", noKeys: "Ключей пока нет.",
      enabled: "включён", disabled: "отключён", disable: "Отключить", enable: "Включить",
      remove: "Удалить", confirm: "Точно удалить?", usage: "Использование", from: "С",
      to: "По", refresh: "Обновить", tokensPerDay: "Токены по дням и ключам",
      byModel: "По моделям", model: "Модель", requests: "Запросы",
      promptTokens: "Токены запроса", completionTokens: "Токены ответа", errors: "Ошибки",
      cost: "Стоимость", none: "нет", total: "всего", day: "день", month: "месяц",
      network: "Не удаётся связаться с сервисом.",
    },
  };
  const TOKEN_KEY = "chatservice.admin.token";
  const $ = (id) => document.getElementById(id);
  let lang = "en";
  let chart = null;

  function normalizeLanguage(tag) {
    const parts = String(tag || "").toLowerCase().replace(/-/g, "_").split("_").filter(Boolean);
    if (parts[0] === "zh") {
      return parts.slice(1).some((p) => ["tw", "hk", "mo", "hant"].includes(p)) ? "zh_TW" : "zh_CN";
    }
    return parts[0] === "en" || parts[0] === "ru" ? parts[0] : null;
  }

  function pickLanguage() {
    const tags = navigator.languages && navigator.languages.length
      ? navigator.languages : [navigator.language];
    for (const tag of tags) {
      const found = normalizeLanguage(tag);
      if (found) return found;
    }
    return "en";
  }

  const t = (key) => LABELS[lang][key] || LABELS.en[key];

  function applyLabels() {
    document.documentElement.lang = lang.replace("_", "-");
    document.title = `${t("title")} · chatservice`;
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  async function api(path, options = {}) {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method: options.method || "GET",
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        cache: "no-store",
      });
    } catch (err) {
      throw new Error(t("network"));
    }
    if (response.status === 401) signOut();
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try {
        const body = await response.json();
        // The admin API answers in the Docker ChatGPT API face's envelope.
        message = (body.data && body.data.response) || body.message || message;
      } catch (err) { /* keep the status */ }
      throw new Error(message);
    }
    return response.status === 204 ? null : response.json();
  }

  // --- keys -------------------------------------------------------------------------------

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function limitsText(key) {
    const parts = [];
    if (key.rpm) parts.push(`${key.rpm} RPM`);
    if (key.tpm) parts.push(`${key.tpm} TPM`);
    if (key.budget_tokens !== null) parts.push(`${key.budget_tokens} ${t("total")}`);
    if (key.daily_budget_tokens !== null) parts.push(`${key.daily_budget_tokens}/${t("day")}`);
    if (key.monthly_budget_tokens !== null) parts.push(`${key.monthly_budget_tokens}/${t("month")}`);
    return parts.join(", ") || t("none");
  }

  function button(label, className, action) {
    const el = document.createElement("button");
    el.type = "button";
    el.textContent = label;
    el.className = className;
    el.addEventListener("click", () => action(el));
    return el;
  }

  async function loadKeys() {
    const { keys } = await api("client-keys");
    const body = $("keys").querySelector("tbody");
    body.replaceChildren();
    $("no-keys").hidden = keys.length > 0;
    for (const key of keys) {
      const row = document.createElement("tr");
      row.dataset.id = key.id;
      row.dataset.name = key.name;
      cell(row, key.name);
      cell(row, key.key);
      cell(row, key.models.join(", "));
      cell(row, limitsText(key));
      cell(row, String(key.spent.total), "num");
      cell(row, key.enabled ? t("enabled") : t("disabled"), key.enabled ? "state-on" : "state-off");
      const actions = document.createElement("div");
      actions.className = "row";
      actions.append(
        button(key.enabled ? t("disable") : t("enable"), "ghost toggle", () => run(async () => {
          await api(`client-keys/${key.id}`, { method: "PATCH", body: { enabled: !key.enabled } });
          await loadKeys();
        })),
        button(t("remove"), "danger delete", (el) => {
          if (!el.dataset.armed) {
            el.dataset.armed = "1";
            el.textContent = t("confirm");
            return;
          }
          run(async () => {
            await api(`client-keys/${key.id}`, { method: "DELETE" });
            await loadKeys();
          });
        }),
      );
      row.append(document.createElement("td"));
      row.lastChild.append(actions);
      body.append(row);
    }
  }

  function numberField(id) {
    const value = $(id).value.trim();
    return value === "" ? undefined : Number(value);
  }

  async function createKey(event) {
    event.preventDefault();
    const body = {
      name: $("new-name").value.trim(),
      models: $("new-models").value.split(",").map((m) => m.trim()).filter(Boolean),
    };
    const numbers = {
      rpm: "new-rpm", tpm: "new-tpm", budget_tokens: "new-budget",
      daily_budget_tokens: "new-daily", monthly_budget_tokens: "new-monthly",
    };
    for (const [field, id] of Object.entries(numbers)) {
      const value = numberField(id);
      if (value !== undefined) body[field] = value;
    }
    // The API takes Unix seconds: the start of the chosen day, UTC.
    if ($("new-expires").value) body.expires_at = Date.parse(`${$("new-expires").value}T00:00:00Z`) / 1000;
    if (!body.models.length) body.models = ["*"];
    const created = await api("client-keys", { method: "POST", body });
    $("created-key").textContent = created.key;
    $("created").hidden = false;
    $("copy").textContent = t("copy");
    $("create").reset();
    $("new-models").value = "*";
    await loadKeys();
  }

  async function copyKey() {
    const text = $("created-key").textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (err) {
      // Without clipboard permission: select the key so Ctrl+C copies it.
      const range = document.createRange();
      range.selectNodeContents($("created-key"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
    }
    $("copy").textContent = t("copied");
  }

  // --- usage ------------------------------------------------------------------------------

  function isoDay(date) {
    return date.toISOString().slice(0, 10);
  }

  function daysBetween(first, last) {
    const days = [];
    for (let d = new Date(`${first}T00:00:00Z`); isoDay(d) <= last; d.setUTCDate(d.getUTCDate() + 1)) {
      days.push(isoDay(d));
    }
    return days;
  }

  const COLORS = ["#2f6fde", "#e07b26", "#2ba36b", "#c6467d", "#7a5bd6", "#b59b1f", "#2aa3b8", "#8c5a3c"];

  function drawChart(report) {
    const days = daysBetween(report.from, report.to);
    const byKey = new Map();
    for (const row of report.rows) {
      if (!byKey.has(row.key)) byKey.set(row.key, new Array(days.length).fill(0));
      byKey.get(row.key)[days.indexOf(row.day)] += row.total_tokens;
    }
    const datasets = [...byKey.entries()].map(([name, data], i) => ({
      label: name, data, backgroundColor: COLORS[i % COLORS.length], stack: "tokens",
    }));
    const data = { labels: days, datasets };
    if (chart) {
      chart.data = data;
      chart.update();
      return;
    }
    chart = new window.Chart($("usage-chart"), {
      type: "bar",
      data,
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
        plugins: { legend: { position: "bottom" } },
      },
    });
  }

  function drawModels(report) {
    const byModel = new Map();
    for (const row of report.rows) {
      const sum = byModel.get(row.model) || { requests: 0, prompt: 0, completion: 0, errors: 0, cost: 0 };
      sum.requests += row.requests;
      sum.prompt += row.prompt_tokens;
      sum.completion += row.completion_tokens;
      sum.errors += row.errors;
      sum.cost += row.cost;
      byModel.set(row.model, sum);
    }
    const body = $("models").querySelector("tbody");
    body.replaceChildren();
    for (const [model, sum] of [...byModel.entries()].sort()) {
      const row = document.createElement("tr");
      row.dataset.model = model;
      cell(row, model);
      for (const value of [sum.requests, sum.prompt, sum.completion, sum.errors]) {
        cell(row, String(value), "num");
      }
      cell(row, sum.cost.toFixed(4), "num");
      body.append(row);
    }
  }

  async function loadUsage(event) {
    if (event) event.preventDefault();
    const query = new URLSearchParams({ from: $("from").value, to: $("to").value });
    const report = await api(`usage?${query}`);
    drawChart(report);
    drawModels(report);
    document.body.dataset.usageLoaded = String(Date.now());
  }

  // --- sign in and out --------------------------------------------------------------------

  async function run(action) {
    showError("");
    try {
      await action();
    } catch (err) {
      showError(err.message);
    }
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    $("panels").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
  }

  async function signedIn() {
    $("sign-in").hidden = true;
    $("panels").hidden = false;
    $("sign-out").hidden = false;
    await loadKeys();
    await loadUsage();
  }

  function start() {
    lang = pickLanguage();
    applyLabels();
    const today = new Date();
    const first = new Date(today);
    first.setUTCDate(first.getUTCDate() - 13);
    $("from").value = isoDay(first);
    $("to").value = isoDay(today);
    $("sign-in").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("admin-token").value.trim());
      $("admin-token").value = "";
      run(signedIn);
    });
    $("sign-out").addEventListener("click", signOut);
    $("create").addEventListener("submit", (event) => run(() => createKey(event)));
    $("copy").addEventListener("click", () => run(copyKey));
    $("range").addEventListener("submit", (event) => run(() => loadUsage(event)));
    if (sessionStorage.getItem(TOKEN_KEY)) {
      run(signedIn).finally(() => { document.body.dataset.ready = "1"; });
    } else {
      signOut();
      document.body.dataset.ready = "1";
    }
  }

  start();
})();
