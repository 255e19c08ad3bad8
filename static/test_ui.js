"use strict";
// The test UI: plain JavaScript, no build step, no network beyond this server.

// The crew (agents_config.py) and the event types, embedded in the page by the server (never copied here).
const PAGE_DATA = JSON.parse(document.getElementById("page-data").textContent);
const CREW = PAGE_DATA.crew;
const AGENTS = CREW.agents.map((a) => a.name);
const ANALYST = AGENTS[0];  // writes the analysis the user confirms
const DOCS = CREW.agents.map((a) => [a.deliverable, a.name]);  // deliverable → its agent, in order
const ANALYSIS = DOCS[0][0];  // the document the user confirms
const EVENT_TYPES = PAGE_DATA.event_types;
const TERMINAL = new Set(["end", "error", "cancelled"]);
const GROUP = { thought: "thought", action: "action", output: "output" };  // others: lifecycle
const MAX_RECONNECT_DELAY_MS = 15000;

const I18N = {
  en: {
    title: "Multi-Agent Software Delivery", language: "Language", newTask: "New task",
    requirementLabel: "What should the team build?",
    requirementPlaceholder: "Describe the software in a few sentences, in English or Chinese…",
    examples: "Examples:", confirmFirst: "Let me review the ProductManager's analysis before the team goes on",
    start: "Start", recentTasks: "Recent tasks", noRecent: "No tasks yet.", noTask: "No task yet",
    task: "Task {id}", reviewAnalysis: "Review analysis", cancel: "Cancel", liveOutput: "Live output",
    agents: "Agents", deliverables: "Deliverables", downloadZip: "Download all (.zip)",
    eventLog: "Event log", show: "Show", fLifecycle: "lifecycle", fOutput: "outputs", fAction: "actions",
    fThought: "tokens", events: "{n} events", steps: "{done} of {total} steps",
    confirmTitle: "The ProductManager asks for your review",
    feedbackLabel: "What should change? (needed to request changes)", later: "Decide later",
    requestChanges: "Request changes", approve: "Approve", roundsLeft: "Revision rounds left: {n}",
    needFeedback: "Write what should change before requesting changes.",
    notYet: "Not written yet.", verdict: "Verdict: {v}",
    "state.waiting": "waiting", "state.working": "working", "state.done": "done", "state.failed": "failed",
    "state.cancelled": "cancelled", "state.waiting_user": "waiting for you",
    "status.queued": "queued", "status.running": "running", "status.awaiting_confirmation": "awaiting your review",
    "status.succeeded": "succeeded", "status.failed": "failed", "status.cancelled": "cancelled",
    "conn.idle": "not connected", "conn.connecting": "connecting…", "conn.live": "live",
    "conn.reconnecting": "connection lost, reconnecting…", "conn.finished": "stream finished",
    "conn.offline": "cannot reach the server", "conn.restarting": "server restarting, will reconnect…",
    versions: "Versions", version: "v{n}: {reason}", gapsCount: "{n} gaps", complete: "complete",
    showChanges: "Show changes from v{from}", showVersion: "Show the document", changesTitle: "What changed since your last review",
    checkFixing: "fix round {round} of {max}", checkOk: "check passed", checkGapsLeft: "{n} gaps left",
    budgetField: "Token budget (optional)", tokens: "{n} tokens", taskUsage: "Task: {usage}", estimated: "≈", budgetTokens: "Budget: {used} of {max} tokens",
    budgetCost: "Budget: {used} of {max}",
    priorityField: "Priority when the server is busy", priorityHigh: "high", priorityNormal: "normal", priorityLow: "low",
    taskNotFound: "Task {id} does not exist or has expired.",
    requestFailed: "The server answered {status}: {detail}", networkFailed: "Cannot reach the server: {detail}",
    authTitle: "This server needs an API key", apiKeyLabel: "API key", useKey: "Use this key",
    apiKeyHelp: "Ask the operator for a key. It is kept in this browser only.",
  },
  zh: {
    title: "多智能体软件交付系统", language: "语言", newTask: "新任务",
    requirementLabel: "需要团队开发什么？", requirementPlaceholder: "用几句话描述软件需求，中文或英文均可…",
    examples: "示例：", confirmFirst: "产品经理完成需求分析后，先由我确认再继续",
    start: "开始", recentTasks: "最近的任务", noRecent: "还没有任务。", noTask: "尚无任务",
    task: "任务 {id}", reviewAnalysis: "查看需求分析", cancel: "取消", liveOutput: "实时输出",
    agents: "智能体", deliverables: "交付物", downloadZip: "全部下载（.zip）",
    eventLog: "事件日志", show: "显示", fLifecycle: "生命周期", fOutput: "产出", fAction: "动作",
    fThought: "逐字输出", events: "共 {n} 个事件", steps: "已完成 {done}/{total} 步",
    confirmTitle: "产品经理请您确认需求分析",
    feedbackLabel: "需要修改什么？（请求修改时必填）", later: "稍后决定",
    requestChanges: "请求修改", approve: "批准", roundsLeft: "剩余修改次数：{n}",
    needFeedback: "请先写明需要修改的内容。",
    notYet: "尚未生成。", verdict: "结论：{v}",
    "state.waiting": "等待中", "state.working": "工作中", "state.done": "已完成", "state.failed": "失败",
    "state.cancelled": "已取消", "state.waiting_user": "等待您确认",
    "status.queued": "排队中", "status.running": "运行中", "status.awaiting_confirmation": "等待确认",
    "status.succeeded": "已完成", "status.failed": "失败", "status.cancelled": "已取消",
    "conn.idle": "未连接", "conn.connecting": "连接中…", "conn.live": "实时",
    "conn.reconnecting": "连接中断，正在重连…", "conn.finished": "事件流已结束",
    "conn.offline": "无法连接服务器", "conn.restarting": "服务器正在重启，稍后自动重连…",
    versions: "版本", version: "v{n}：{reason}", gapsCount: "{n} 处缺口", complete: "完整",
    showChanges: "显示相对 v{from} 的修改", showVersion: "显示文档", changesTitle: "自上次确认以来的修改",
    checkFixing: "第 {round}/{max} 轮修正", checkOk: "检查通过", checkGapsLeft: "剩余 {n} 处缺口",
    budgetField: "令牌预算（可选）", tokens: "{n} 个令牌", taskUsage: "任务合计：{usage}", estimated: "约", budgetTokens: "预算：已用 {used} / {max} 个令牌",
    budgetCost: "预算：已用 {used} / {max}",
    priorityField: "服务器繁忙时的优先级", priorityHigh: "高", priorityNormal: "普通", priorityLow: "低",
    taskNotFound: "任务 {id} 不存在或已过期。",
    requestFailed: "服务器返回 {status}：{detail}", networkFailed: "无法连接服务器：{detail}",
    authTitle: "此服务器需要 API 密钥", apiKeyLabel: "API 密钥", useKey: "使用此密钥",
    apiKeyHelp: "请向管理员索取密钥。密钥只保存在本浏览器中。",
  },
};

const $ = (id) => document.getElementById(id);
let lang = pickLanguage();

function pickLanguage() {
  const saved = localStorage.getItem("lang");
  if (saved && I18N[saved]) return saved;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}
// What each agent's document is called, in the current language (from the crew's data).
function docTitle(agentName) {
  const agent = CREW.agents.find((a) => a.name === agentName);
  return agent.title[lang] ?? agent.title.en;
}
function docTab(deliverable) {
  const agent = CREW.agents.find((a) => a.deliverable === deliverable);
  return agent.tab[lang] ?? agent.tab.en;
}
function t(key, vars = {}) {
  const text = I18N[lang][key] ?? I18N.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, k) => String(vars[k] ?? ""));
}

// ---- state of the task being watched --------------------------------------------------------

const view = {
  taskId: null, lastSeq: 0, source: null, terminal: false, status: null, reconnects: 0,
  timer: null, queue: [], flushing: false, agentState: {}, tokenAgent: null, done: 0, total: CREW.total_steps,
  awaiting: null, docs: {}, selectedDoc: ANALYSIS, verdict: null, conn: "idle",
  usage: { agents: {}, total: null }, budget: null, checks: {}, versions: {}, shownVersion: {},
};

function showError(message) {
  const box = $("alert");
  box.textContent = message; box.hidden = !message;
}

function withKey(options = {}) {
  const key = localStorage.getItem("apiKey");
  return key ? { ...options, headers: { ...(options.headers || {}), "X-API-Key": key } } : options;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, withKey(options));
  } catch (err) {
    throw new Error(t("networkFailed", { detail: err.message }));
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail
        : (body.detail || []).map((d) => d.msg).join("; ") || detail;
    } catch (_) { /* not JSON */ }
    const error = new Error(t("requestFailed", { status: response.status, detail }));
    error.status = response.status;
    if (response.status === 401 || response.status === 403) $("auth").hidden = false;
    throw error;
  }
  return response;
}

// ---- rendering ------------------------------------------------------------------------------

function renderAgents() {
  const list = $("agents");
  list.replaceChildren(...AGENTS.map((name) => {
    const state = view.agentState[name] || "waiting";
    const li = document.createElement("li");
    li.className = "agent"; li.dataset.agent = name; li.dataset.state = state;
    const n = document.createElement("div"); n.className = "name"; n.textContent = name;
    const r = document.createElement("div"); r.className = "role"; r.textContent = docTitle(name);
    const s = document.createElement("div"); s.className = "state"; s.textContent = t("state." + state);
    li.append(n, r, s);
    const checked = view.checks[name];
    if (checked) {
      const c = document.createElement("div"); c.className = "check"; c.dataset.passed = String(checked.passed);
      c.textContent = !checked.accepted ? t("checkFixing", { round: checked.fix_round + 1, max: checked.max_fix_rounds })
        : checked.passed ? t("checkOk") : t("checkGapsLeft", { n: checked.gaps.length });
      li.append(c);
    }
    const usage = view.usage.agents[name];
    if (usage) {
      const u = document.createElement("div"); u.className = "usage"; u.textContent = formatUsage(usage);
      li.append(u);
    }
    return li;
  }));
}

// ---- usage, cost and the budget -------------------------------------------------------------

function formatCost(cost, currency) {
  return `${cost.toFixed(cost > 0 && cost < 0.01 ? 6 : 4)} ${currency}`;
}

function formatUsage(usage) {  // "≈1,234 tokens · 0.0012 USD" (≈ when some counts are estimates)
  const tokens = (usage.estimated ? t("estimated") : "") + t("tokens", { n: usage.total_tokens.toLocaleString(lang) });
  return usage.cost == null || !usage.currency ? tokens : `${tokens} · ${formatCost(usage.cost, usage.currency)}`;
}

function taskUsage() {  // the terminal event's totals, else the finished agents' so far
  if (view.usage.total) return view.usage.total;
  const agents = Object.values(view.usage.agents);
  if (!agents.length) return null;
  const currencies = new Set(agents.map((a) => a.currency));
  const priced = agents.every((a) => a.cost != null) && currencies.size === 1;
  return {
    total_tokens: agents.reduce((n, a) => n + a.total_tokens, 0), estimated: agents.some((a) => a.estimated),
    cost: priced ? agents.reduce((n, a) => n + a.cost, 0) : null, currency: priced ? [...currencies][0] : null,
  };
}

function renderUsage() {
  const usage = taskUsage();
  $("task-usage").hidden = !usage;
  if (usage) $("task-usage").textContent = t("taskUsage", { usage: formatUsage(usage) });
  const budget = view.budget;
  const limit = budget && (budget.max_tokens ?? budget.max_cost);
  $("budget").hidden = !limit;
  if (!limit) return;
  const byTokens = budget.max_tokens != null;
  const used = usage ? (byTokens ? usage.total_tokens : usage.cost || 0) : 0;
  $("budget-meter").value = Math.min(1, used / limit);
  $("budget").dataset.over = String(used > limit);
  $("budget-label").textContent = byTokens
    ? t("budgetTokens", { used: used.toLocaleString(lang), max: limit.toLocaleString(lang) })
    : t("budgetCost", { used: formatCost(used, (usage && usage.currency) || ""), max: formatCost(limit, (usage && usage.currency) || "") });
}

function renderProgress() {
  $("progress").max = view.total; $("progress").value = view.done;
  $("progress-label").textContent = t("steps", { done: view.done, total: view.total });
}

function renderStatus() {
  const badge = $("task-status");
  badge.hidden = !view.status; badge.dataset.status = view.status || "";
  badge.textContent = view.status ? t("status." + view.status) : "";
  $("cancel").hidden = !view.taskId || view.terminal;
  $("review").hidden = view.awaiting === null;
  $("task-title").textContent = view.taskId ? t("task", { id: view.taskId }) : t("noTask");
}

function setConn(state) {
  view.conn = state;
  const el = $("conn");
  el.dataset.state = state; el.textContent = t("conn." + state);
}

function renderTabs() {
  const tabs = $("tabs"), panels = $("panels");
  tabs.replaceChildren(); panels.replaceChildren();
  for (const [name] of DOCS) {
    const selected = name === view.selectedDoc;
    const tab = document.createElement("button");
    tab.type = "button"; tab.setAttribute("role", "tab"); tab.id = "tab-" + name;
    tab.setAttribute("aria-controls", "panel-" + name);
    tab.setAttribute("aria-selected", String(selected)); tab.tabIndex = selected ? 0 : -1;
    tab.textContent = docTab(name);
    tab.addEventListener("click", () => { view.selectedDoc = name; view.shownVersion[name] = null; renderTabs(); });
    tab.addEventListener("keydown", onTabKey);
    const panel = document.createElement("div");
    panel.setAttribute("role", "tabpanel"); panel.id = "panel-" + name;
    panel.setAttribute("aria-labelledby", tab.id); panel.hidden = !selected;
    panel.className = "doc" + (view.docs[name] ? "" : " placeholder");
    if (view.docs[name]) panel.innerHTML = view.docs[name];  // rendered and escaped by the server
    else panel.textContent = t("notYet");
    tabs.append(tab); panels.append(panel);
  }
  const verdict = $("verdict");
  verdict.hidden = !view.verdict; verdict.dataset.verdict = view.verdict || "";
  renderVersions();
  verdict.textContent = view.verdict ? t("verdict", { v: view.verdict }) : "";
}

function onTabKey(event) {
  const names = DOCS.map(([n]) => n);
  const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
  if (!step) return;
  const i = (names.indexOf(view.selectedDoc) + step + names.length) % names.length;
  view.selectedDoc = names[i]; renderTabs(); $("tab-" + names[i]).focus();
}

function renderAll() {
  renderAgents(); renderProgress(); renderUsage(); renderStatus(); renderTabs(); setConn(view.conn);
  $("event-count").textContent = t("events", { n: view.lastSeq });
}

function applyLanguage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  $("lang").value = lang;
  document.title = t("title");
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of document.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  renderAll(); loadRecent();
}

// ---- events ---------------------------------------------------------------------------------

function onMessage(message) {
  // A task's "error" event shares its name with EventSource's own connection-error event,
  // which carries no data: only MessageEvents are ours.
  if (!(message instanceof MessageEvent)) return;
  const event = JSON.parse(message.data);
  if (event.task_id !== view.taskId || event.sequence <= view.lastSeq) return;  // never twice
  view.lastSeq = event.sequence;
  view.queue.push(event);
  if (!view.flushing) { view.flushing = true; requestAnimationFrame(flush); }
  if (TERMINAL.has(event.event_type)) finishStream();
}

function flush() {
  view.flushing = false;
  const events = view.queue.splice(0);
  const rows = [];
  let tokens = "";
  for (const event of events) {
    rows.push(logRow(event));
    if (event.event_type === "thought") {
      if (view.tokenAgent !== event.agent_name) { flushTokens(tokens); tokens = ""; startTokens(event.agent_name); }
      tokens += event.content;
    } else {
      flushTokens(tokens); tokens = "";
      apply(event);
    }
  }
  flushTokens(tokens);
  const log = $("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(...rows);
  if (atBottom) log.scrollTop = log.scrollHeight;
  $("event-count").textContent = t("events", { n: view.lastSeq });
  renderAgents(); renderProgress(); renderUsage(); renderStatus();
}

function logRow(event) {
  const li = document.createElement("li");
  li.dataset.seq = event.sequence; li.dataset.type = event.event_type;
  li.dataset.group = GROUP[event.event_type] || "lifecycle";
  const seq = document.createElement("span"); seq.className = "seq"; seq.textContent = "#" + event.sequence;
  const type = document.createElement("span"); type.className = "type";
  type.textContent = event.event_type; type.title = event.agent_name + " · " + event.timestamp;
  const text = document.createElement("span"); text.className = "text";
  const content = event.event_type === "output" ? event.content.slice(0, 160) + (event.content.length > 160 ? "…" : "") : event.content;
  text.textContent = (event.agent_name ? event.agent_name + ": " : "") + content;
  li.append(seq, type, text);
  return li;
}

function startTokens(agent) {
  view.tokenAgent = agent;
  $("tokens").textContent = ""; $("tokens-agent").textContent = "· " + agent;
}

function flushTokens(text) {
  if (!text) return;
  const pre = $("tokens");
  pre.append(text);
  pre.scrollTop = pre.scrollHeight;
}

function apply(event) {
  const meta = event.metadata || {};
  switch (event.event_type) {
    case "start":
      view.status = "running"; view.total = meta.total_steps || view.total; view.budget = meta.budget || null; break;
    case "agent_start":
      view.agentState[event.agent_name] = "working"; view.status = "running"; view.awaiting = null;
      startTokens(event.agent_name); break;
    case "output": {
      const doc = DOCS.find(([, agent]) => agent === event.agent_name);
      if (doc) loadDocument(doc[0]);
      break;
    }
    case "check":
      view.checks[event.agent_name] = meta;
      if (view.docs[meta.deliverable]) loadVersions(meta.deliverable);
      break;
    case "step_end":
      view.agentState[event.agent_name] = "done";
      if (meta.usage) view.usage.agents[event.agent_name] = meta.usage;
      view.done = meta.completed_steps ?? view.done; view.total = meta.total_steps || view.total; break;
    case "awaiting_confirmation":
      view.status = "awaiting_confirmation"; view.agentState[ANALYST] = "waiting_user";
      view.awaiting = { roundsLeft: meta.revision_rounds_left, version: meta.version, previous: meta.previous_version };
      openConfirmation(); break;
    case "confirmed":
      view.awaiting = null; view.status = "running"; closeConfirmation();
      if (meta.approved === false) view.agentState[ANALYST] = "working";
      else view.agentState[ANALYST] = "done";
      break;
    case "model_retry":  // the tokens shown since the call's action are void: its next attempt starts over
      startTokens(event.agent_name); break;
    case "resumed":  // the process was lost; its agent starts over (its agent_start follows)
      view.status = "running";
      if (meta.agent in view.agentState) view.agentState[meta.agent] = "working";
      break;
    case "end":
      view.status = "succeeded"; view.verdict = meta.verdict || null;
      loadDocuments();
      break;
    case "error":
    case "cancelled":
      if (event.event_type === "error") showError(event.content);  // it says what went wrong and what to do
      view.status = event.event_type === "error" ? "failed" : "cancelled";
      for (const name of AGENTS) if (view.agentState[name] === "working" || view.agentState[name] === "waiting_user")
        view.agentState[name] = event.event_type === "error" ? "failed" : "cancelled";
      view.awaiting = null; closeConfirmation();
      loadDocuments();
      break;
  }
  if (TERMINAL.has(event.event_type) && meta.usage) view.usage.total = meta.usage;
  if (TERMINAL.has(event.event_type)) {
    $("zip").href = `/api/task/${encodeURIComponent(view.taskId)}/deliverables.zip`;
    $("zip").hidden = false;
    loadRecent();
  }
}

async function loadDocuments() {  // those written so far: a failed run may have some
  try {
    const r = await api(`/api/task/${encodeURIComponent(view.taskId)}/deliverables`);
    for (const item of (await r.json()).deliverables) loadDocument(item.name);
  } catch (_) { /* offline: the connection indicator says so */ }
}

async function loadDocument(name) {
  const taskId = view.taskId;
  try {
    const r = await fetch(`/api/task/${encodeURIComponent(taskId)}/deliverables/${name}?format=html`, withKey());
    if (!r.ok || taskId !== view.taskId) return;  // 404: not written (yet)
    view.docs[name] = await r.text();
    if (!view.docs[view.selectedDoc] || name === ANALYSIS && view.selectedDoc === name) view.selectedDoc = name;
    renderTabs();
    if (name === ANALYSIS && $("confirm-dialog").open) $("analysis").innerHTML = view.docs[name];
    loadVersions(name);
  } catch (_) { /* offline: the stream's reconnect shows it; the document loads with the next event */ }
}

// ---- versions and what changed -------------------------------------------------------------

async function loadVersions(name) {
  const taskId = view.taskId;
  try {
    const r = await fetch(`/api/task/${encodeURIComponent(taskId)}/deliverables/${name}/versions`, withKey());
    if (!r.ok || taskId !== view.taskId) return;
    view.versions[name] = (await r.json()).versions;
    if (name === view.selectedDoc) renderVersions();
  } catch (_) { /* the versions are extra; the document itself is shown */ }
}

function renderVersions() {
  const bar = $("versions"), name = view.selectedDoc, versions = view.versions[name] || [];
  bar.hidden = versions.length < 2;
  bar.replaceChildren(...versions.map((v) => {
    const b = document.createElement("button");
    b.type = "button"; b.className = "chip"; b.dataset.version = v.number;
    b.setAttribute("aria-pressed", String(view.shownVersion[name] === v.number));
    const state = v.gaps.length ? t("gapsCount", { n: v.gaps.length }) : t("complete");
    b.textContent = `${t("version", { n: v.number, reason: v.reason })} · ${state}`;
    b.addEventListener("click", () => showVersion(name, v.number));
    return b;
  }));
  const shown = view.shownVersion[name];
  if (shown && shown > 1) {
    const diff = document.createElement("button");
    diff.type = "button"; diff.id = "show-changes"; diff.textContent = t("showChanges", { from: shown - 1 });
    diff.addEventListener("click", () => showChanges(name, shown - 1, shown));
    bar.append(diff);
  }
}

async function versionHtml(name, url) {
  const r = await fetch(url, withKey());
  return r.ok ? r.text() : "";
}

async function showVersion(name, number) {
  const base = `/api/task/${encodeURIComponent(view.taskId)}/deliverables/${name}`;
  view.shownVersion[name] = number;
  $("panel-" + name).innerHTML = await versionHtml(name, `${base}/versions/${number}?format=html`);  // escaped by the server
  renderVersions();
}

async function showChanges(name, from, to) {
  const base = `/api/task/${encodeURIComponent(view.taskId)}/deliverables/${name}`;
  $("panel-" + name).innerHTML = await versionHtml(name, `${base}/diff?from=${from}&to=${to}&format=html`);
}

async function showConfirmationChanges() {
  const a = view.awaiting, box = $("changes");
  box.hidden = !(a && a.previous && a.version);
  if (box.hidden) return;
  const base = `/api/task/${encodeURIComponent(view.taskId)}/deliverables/${ANALYSIS}`;
  $("changes-diff").innerHTML = await versionHtml(ANALYSIS, `${base}/diff?from=${a.previous}&to=${a.version}&format=html`);
}

// ---- the stream: EventSource plus our own reconnect when the browser gives up -----------------

async function connect() {
  clearTimeout(view.timer);
  const taskId = view.taskId;
  const params = new URLSearchParams();
  if (view.lastSeq) params.set("after", view.lastSeq);
  if (authRequired) {  // EventSource cannot send the key: a token for this task's stream
    try {
      const r = await api(`/api/task/${encodeURIComponent(taskId)}/stream_token`, { method: "POST" });
      params.set("token", (await r.json()).stream_token);
    } catch (err) { showError(err.message); setConn("offline"); return; }
    if (taskId !== view.taskId) return;
  }
  const url = `/api/stream/${encodeURIComponent(taskId)}` + (params.size ? "?" + params : "");
  const source = new EventSource(url);
  view.source = source;
  setConn(view.reconnects ? "reconnecting" : "connecting");
  source.onopen = () => { view.reconnects = 0; setConn("live"); };
  source.onerror = () => {
    if (view.source !== source || view.terminal || (view.conn === "restarting" && source.readyState !== EventSource.CLOSED)) return;
    // While CONNECTING the browser retries by itself and sends Last-Event-ID; once CLOSED (an
    // HTTP error, e.g. a proxy's 502) it has given up and we reconnect after our own backoff.
    setConn("reconnecting");
    if (source.readyState === EventSource.CLOSED) { source.close(); scheduleReconnect(); }
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onMessage);
  // The server's goodbye before it stops (no id: Last-Event-ID stays at the last task event).
  // The browser reconnects by itself once the server is back.
  source.addEventListener("shutdown", () => { if (view.source === source) setConn("restarting"); });
}

async function scheduleReconnect() {
  const taskId = view.taskId;
  const delay = Math.min(MAX_RECONNECT_DELAY_MS, 500 * 2 ** view.reconnects++);
  try {
    await api(`/api/task/${encodeURIComponent(taskId)}/status`);
  } catch (err) {
    if (err.status === 404) { setConn("idle"); showError(t("taskNotFound", { id: taskId })); return; }
    setConn("offline");
  }
  if (taskId === view.taskId && !view.terminal) view.timer = setTimeout(connect, delay);
}

function finishStream() {
  view.terminal = true;
  if (view.source) view.source.close();
  view.source = null;
  setConn("finished");
}

function follow(taskId, { push = true } = {}) {
  if (view.source) view.source.close();
  clearTimeout(view.timer);
  Object.assign(view, {
    taskId, lastSeq: 0, source: null, terminal: false, status: null, reconnects: 0, queue: [],
    agentState: {}, tokenAgent: null, done: 0, total: CREW.total_steps, awaiting: null, docs: {},
    selectedDoc: ANALYSIS, verdict: null, usage: { agents: {}, total: null }, budget: null,
    checks: {}, versions: {}, shownVersion: {},
  });
  $("log").replaceChildren(); $("tokens").textContent = ""; $("tokens-agent").textContent = "";
  $("task-requirement").textContent = ""; $("zip").hidden = true; showError("");
  closeConfirmation();
  const url = new URL(location.href);
  url.searchParams.set("task", taskId);
  if (push) history.pushState({ task: taskId }, "", url); else history.replaceState({ task: taskId }, "", url);
  renderAll(); markRecent();
  if (!canCall()) return;  // resumes when a key is entered
  api(`/api/task/${encodeURIComponent(taskId)}/status`).then(async (r) => {
    const s = await r.json();
    if (taskId !== view.taskId) return;
    $("task-requirement").textContent = s.requirement;
    if (!view.status) { view.status = s.status; renderStatus(); }
  }).catch((err) => { if (err.status === 404) showError(t("taskNotFound", { id: taskId })); });
  connect();
}

// ---- confirmation ---------------------------------------------------------------------------

function openConfirmation() {
  const dialog = $("confirm-dialog");
  $("rounds-left").textContent = view.awaiting && view.awaiting.roundsLeft !== undefined
    ? t("roundsLeft", { n: view.awaiting.roundsLeft }) : "";
  $("revise").disabled = view.awaiting && view.awaiting.roundsLeft === 0;
  if (view.docs[ANALYSIS]) $("analysis").innerHTML = view.docs[ANALYSIS];
  else loadDocument(ANALYSIS);
  showConfirmationChanges();
  if (!dialog.open) dialog.showModal();
}

function closeConfirmation() {
  const dialog = $("confirm-dialog");
  if (dialog.open) dialog.close();
}

async function answer(approved) {
  const feedback = $("feedback").value.trim();
  if (!approved && !feedback) { $("feedback").setCustomValidity(t("needFeedback")); $("feedback").reportValidity(); return; }
  $("feedback").setCustomValidity("");
  try {
    await api(`/api/task/${encodeURIComponent(view.taskId)}/confirm`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(approved ? { approved: true } : { approved: false, feedback }),
    });
    $("feedback").value = ""; closeConfirmation();
  } catch (err) { showError(err.message); }
}

// ---- recent tasks ---------------------------------------------------------------------------

const canCall = () => !authRequired || Boolean(localStorage.getItem("apiKey"));

async function loadRecent() {
  if (!canCall()) return;  // the key panel is showing; no request that would only be refused
  try {
    const body = await (await api("/api/tasks?limit=10")).json();
    const list = $("recent-list");
    if (!body.tasks.length) {
      const li = document.createElement("li"); li.className = "muted"; li.textContent = t("noRecent");
      list.replaceChildren(li); return;
    }
    list.replaceChildren(...body.tasks.map((task) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "?task=" + encodeURIComponent(task.task_id); a.dataset.task = task.task_id;
      const badge = document.createElement("span"); badge.className = "badge";
      badge.dataset.status = task.status; badge.textContent = t("status." + task.status);
      const text = document.createElement("span"); text.className = "text"; text.textContent = task.requirement;
      a.append(badge, text);
      if (task.usage && task.usage.calls) {
        const usage = document.createElement("span"); usage.className = "usage"; usage.textContent = formatUsage(task.usage);
        a.append(usage);
      }
      a.addEventListener("click", (e) => { e.preventDefault(); follow(task.task_id); });
      li.append(a);
      return li;
    }));
    markRecent();
  } catch (_) { /* the list is a convenience; the stream's indicator reports the connection */ }
}

function markRecent() {
  for (const a of document.querySelectorAll("#recent-list a"))
    a.setAttribute("aria-current", String(a.dataset.task === view.taskId));
}

// ---- wiring ---------------------------------------------------------------------------------

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("submit");
  button.disabled = true; showError("");
  try {
    const r = await api("/api/run_task", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        user_requirement: $("req").value, skip_confirmation: !$("confirm-first").checked,
        priority: $("priority").value,
        ...($("budget-tokens").value ? { budget: { max_tokens: Number($("budget-tokens").value) } } : {}),
      }),
    });
    const body = await r.json();
    follow(body.task_id);
    loadRecent();
  } catch (err) { showError(err.message); } finally { button.disabled = false; }
});
$("zip").addEventListener("click", async (event) => {
  if (!authRequired) return;  // a plain link works without keys
  event.preventDefault();  // with keys, the download needs the header: fetch it, then save it
  try {
    const blob = await (await api($("zip").getAttribute("href"))).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `delivery-${view.taskId}.zip`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (err) { showError(err.message); }
});
$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("apiKey", $("api-key").value.trim());
  $("auth").hidden = true; showError("");
  loadRecent();
  if (view.taskId) follow(view.taskId, { push: false });
});
$("cancel").addEventListener("click", async () => {
  try { await api(`/api/task/${encodeURIComponent(view.taskId)}/cancel`, { method: "POST" }); }
  catch (err) { showError(err.message); }
});
$("review").addEventListener("click", openConfirmation);
$("approve").addEventListener("click", () => answer(true));
$("revise").addEventListener("click", () => answer(false));
$("later").addEventListener("click", closeConfirmation);
$("feedback").addEventListener("input", () => $("feedback").setCustomValidity(""));
$("lang").addEventListener("change", () => { lang = $("lang").value; localStorage.setItem("lang", lang); applyLanguage(); });
for (const button of document.querySelectorAll("[data-example]"))
  button.addEventListener("click", () => { $("req").value = button.dataset.example; $("req").focus(); });
for (const box of document.querySelectorAll("[data-filter]"))
  box.addEventListener("change", () => $("log").classList.toggle("hide-" + box.dataset.filter, !box.checked));
window.addEventListener("popstate", () => {
  const task = new URLSearchParams(location.search).get("task");
  if (task && task !== view.taskId) follow(task, { push: false });
});

let authRequired = false;

async function start() {
  try {
    authRequired = (await (await fetch("/healthz")).json()).auth_required;
  } catch (_) { /* the first API call will say what is wrong */ }
  if (authRequired && !localStorage.getItem("apiKey")) $("auth").hidden = false;
  applyLanguage();
  const initial = new URLSearchParams(location.search).get("task");
  if (initial) follow(initial, { push: false });
}

start();
