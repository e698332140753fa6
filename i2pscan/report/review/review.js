'use strict';
// The i2pscan review page. Every value from the report is untrusted: the DOM is built with
// createElement and textContent only, never innerHTML, and attributes are set as properties.
(function () {
  const meta = JSON.parse(document.getElementById('meta').textContent);
  const data = JSON.parse(document.getElementById('data').textContent);
  const F = {};
  meta.fields.forEach((name, i) => { F[name] = i; });
  const PAGE = 120;
  const VERDICTS = { synthetic: 'synthetic', real: 'real', error: 'error', unknown: 'unknown' };
  const $ = (id) => document.getElementById(id);
  const grid = $('grid');
  const viewer = $('viewer');

  // -- decisions, kept in this browser under the report's identity ----------------------------
  const KEY = 'i2pscan-review:' + meta.report_id;
  let decisions = new Map();
  let storageNote = '';
  try {
    const saved = JSON.parse(window.localStorage.getItem(KEY) || '{}');
    decisions = new Map(Object.entries(saved).filter(([, v]) => v === 'synthetic' || v === 'real'));
  } catch (e) {
    storageNote = 'decisions cannot be kept in this browser (storage unavailable): export before closing';
  }
  function saveDecisions() {
    try {
      window.localStorage.setItem(KEY, JSON.stringify(Object.fromEntries(decisions)));
    } catch (e) {
      storageNote = 'decisions cannot be kept in this browser (storage unavailable): export before closing';
    }
  }

  // -- row helpers ------------------------------------------------------------------------------
  const sep = meta.sep || '/';
  function isAbsolute(p) { return p.startsWith('/') || p.startsWith('\\') || /^[A-Za-z]:[\\/]/.test(p); }
  function fullPath(i) {
    const p = data[i][F.path];
    if (isAbsolute(p)) return p;
    return meta.root.endsWith(sep) ? meta.root + p : meta.root + sep + p;
  }
  function fileUrl(p) {
    let s = p.replace(/\\/g, '/');
    if (!s.startsWith('/')) s = '/' + s;
    return 'file://' + s.split('/').map((part) => encodeURIComponent(part).replace(/%3A/g, ':')).join('/');
  }
  function baseName(p) { const parts = p.split(/[\\/]/); return parts[parts.length - 1] || p; }
  function verdictOf(i) { return String(data[i][F.verdict]); }
  function scoreOf(i) { const s = data[i][F.score]; return typeof s === 'number' ? s : null; }
  function provOf(i) { const p = data[i][F.provenance]; return p === null || p === undefined ? '(missing)' : String(p); }
  function humanSize(n) {
    if (typeof n !== 'number') return '';
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let u = 0;
    while (n >= 1000 && u < units.length - 1) { n /= 1000; u += 1; }
    return (u ? n.toFixed(1) : String(n)) + ' ' + units[u];
  }
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // -- state: filters, order, page, selection -----------------------------------------------------
  const state = { q: '', verdict: '', prov: '', min: 0, max: 1, errors: false, decision: '', sort: 'review',
    page: 0, sel: 0 };
  let order = null;     // all row indices in the chosen order
  let view = [];        // the filtered ones
  let lower = null;     // lower-cased paths, made on the first search

  function sortOrder(kind) {
    const idx = new Array(data.length);
    for (let i = 0; i < data.length; i++) idx[i] = i;
    const score = (i) => { const s = scoreOf(i); return s === null ? -1 : s; };
    const rank = (i) => { const v = verdictOf(i); return v === 'synthetic' ? 0 : v === 'error' ? 2 : 1; };
    const cmp = {
      review: (a, b) => rank(a) - rank(b) || score(b) - score(a) || a - b,
      'score-desc': (a, b) => score(b) - score(a) || a - b,
      'score-asc': (a, b) => (scoreOf(a) === null) - (scoreOf(b) === null) || score(a) - score(b) || a - b,
      path: (a, b) => { const x = data[a][F.path]; const y = data[b][F.path]; return x < y ? -1 : x > y ? 1 : a - b; },
      size: (a, b) => (data[b][F.size_bytes] || 0) - (data[a][F.size_bytes] || 0) || a - b,
    }[kind] || ((a, b) => a - b);
    return idx.sort(cmp);
  }

  function matches(i) {
    const v = verdictOf(i);
    if (state.verdict && v !== state.verdict) return false;
    if (state.errors && v !== 'error') return false;
    if (state.prov && provOf(i) !== state.prov) return false;
    if (state.min > 0 || state.max < 1) {
      const s = scoreOf(i);
      if (s === null || s < state.min || s > state.max) return false;
    }
    if (state.decision) {
      const d = decisions.get(fullPath(i)) || 'none';
      if (d !== state.decision) return false;
    }
    if (state.q) {
      if (!lower) lower = data.map((r) => String(r[F.path]).toLowerCase());
      if (!lower[i].includes(state.q)) return false;
    }
    return true;
  }

  function refilter(keepPage) {
    if (!order) order = sortOrder(state.sort);
    view = order.filter(matches);
    if (!keepPage) { state.page = 0; state.sel = 0; }
    render();
  }

  // -- cards --------------------------------------------------------------------------------------
  function placeholderText(i) {
    const r = data[i];
    if (verdictOf(i) === 'error') return 'unreadable';
    if (r[F.thumb_note]) return 'no preview: ' + r[F.thumb_note];
    return 'no preview (beyond --max-thumbs)';
  }

  function thumbNode(i) {
    const box = el('div', 'thumb');
    const name = data[i][F.thumb];
    if (typeof name === 'string' && name) {
      const img = el('img');
      img.alt = '';
      img.loading = 'lazy';
      img.decoding = 'async';
      img.onerror = () => { box.replaceChildren(el('div', 'placeholder', 'thumbnail missing')); };
      img.src = 'thumbs/' + encodeURIComponent(name);
      box.appendChild(img);
    } else {
      box.appendChild(el('div', 'placeholder', placeholderText(i)));
    }
    return box;
  }

  function card(i, pos) {
    const r = data[i];
    const v = verdictOf(i);
    const node = el('article', 'card v-' + (VERDICTS[v] || 'other'));
    node.dataset.path = String(r[F.path]);
    node.dataset.verdict = v;
    node.dataset.index = String(i);
    node.dataset.pos = String(pos);
    node.tabIndex = -1;
    node.title = String(r[F.path]);
    node.appendChild(thumbNode(i));
    const s = scoreOf(i);
    const bar = el('div', 'scorebar');
    const fill = el('div', 'fill');
    fill.style.width = s === null ? '0%' : (Math.max(0, Math.min(1, s)) * 100).toFixed(1) + '%';
    bar.appendChild(fill);
    node.appendChild(bar);
    const line = el('div', 'line');
    line.appendChild(el('span', 'score', s === null ? '–' : s.toFixed(3)));
    line.appendChild(el('span', 'badge verdict-' + (VERDICTS[v] || 'other'), v));
    if (meta.has_provenance) {
      const p = provOf(i);
      const known = ['generated', 'ai-edited', 'captured', 'camera-exif', 'none'];
      line.appendChild(el('span', 'badge prov-' + (known.includes(p) ? p : 'other'), p));
      if (r[F.generator]) line.appendChild(el('span', 'badge generator', r[F.generator]));
    }
    const d = decisions.get(fullPath(i));
    if (d) { line.appendChild(el('span', 'badge decision', 'you: ' + d)); node.classList.add('d-' + d); }
    node.appendChild(line);
    node.appendChild(el('div', 'name', baseName(String(r[F.path]))));
    const facts = [humanSize(r[F.size_bytes])];
    if (r[F.width] && r[F.height]) facts.push(r[F.width] + '×' + r[F.height]);
    if (r[F.format]) facts.push(r[F.format]);
    node.appendChild(el('div', 'facts', facts.filter(Boolean).join(' · ')));
    if (r[F.error]) node.appendChild(el('div', 'error', r[F.error]));
    const actions = el('div', 'actions');
    for (const label of ['synthetic', 'real']) {
      const b = el('button', 'act-' + label, label);
      b.type = 'button';
      b.tabIndex = -1;
      b.addEventListener('click', (e) => { e.stopPropagation(); select(pos); decide(d === label ? null : label); });
      actions.appendChild(b);
    }
    node.appendChild(actions);
    node.addEventListener('click', () => select(pos));
    node.addEventListener('dblclick', () => { select(pos); openViewer(); });
    return node;
  }

  function pages() { return Math.max(1, Math.ceil(view.length / PAGE)); }

  function render() {
    state.page = Math.min(Math.max(0, state.page), pages() - 1);
    const start = state.page * PAGE;
    const slice = view.slice(start, start + PAGE);
    const nodes = slice.map((i, pos) => card(i, pos));
    grid.replaceChildren(...nodes);
    state.sel = Math.min(Math.max(0, state.sel), Math.max(0, slice.length - 1));
    const shown = slice.length ? (start + 1) + '–' + (start + slice.length) : '0';
    let text = 'showing ' + shown + ' of ' + view.length.toLocaleString('en') + ' matching (' +
      data.length.toLocaleString('en') + ' files) · ' + decisions.size.toLocaleString('en') + ' decisions';
    if (storageNote) text += ' · ' + storageNote;
    $('status').textContent = text;
    $('page-info').textContent = 'page ' + (state.page + 1) + ' of ' + pages();
    $('prev').disabled = state.page === 0;
    $('next').disabled = state.page >= pages() - 1;
    $('export').textContent = 'Export decisions (' + decisions.size + ')';
    highlight(false);
  }

  function highlight(focus) {
    const cards = grid.children;
    for (let k = 0; k < cards.length; k++) cards[k].classList.toggle('sel', k === state.sel);
    const node = cards[state.sel];
    if (node && focus) { node.focus({ preventScroll: true }); node.scrollIntoView({ block: 'nearest' }); }
  }

  function select(pos) { state.sel = pos; highlight(true); if (!viewer.hidden) fillViewer(); }

  function currentRow() { return view[state.page * PAGE + state.sel]; }

  function move(delta) {
    if (!view.length) return;
    const at = Math.min(Math.max(0, state.page * PAGE + state.sel + delta), view.length - 1);
    const page = Math.floor(at / PAGE);
    state.sel = at - page * PAGE;
    if (page !== state.page) { state.page = page; render(); }
    highlight(true);
    if (!viewer.hidden) fillViewer();
  }

  function turn(delta) {
    const page = Math.min(Math.max(0, state.page + delta), pages() - 1);
    if (page === state.page) return;
    state.page = page;
    state.sel = 0;
    render();
    highlight(true);
  }

  function columns() {
    const cards = grid.children;
    if (!cards.length) return 1;
    const top = cards[0].offsetTop;
    let n = 0;
    while (n < cards.length && cards[n].offsetTop === top) n++;
    return Math.max(1, n);
  }

  function decide(label) {
    const i = currentRow();
    if (i === undefined) return;
    const key = fullPath(i);
    if (label) decisions.set(key, label); else decisions.delete(key);
    saveDecisions();
    const pos = state.sel;
    const node = grid.children[pos];
    if (node) node.replaceWith(card(i, pos));
    renderCounts();
    highlight(true);
    if (!viewer.hidden) fillViewer();
  }

  function renderCounts() {
    $('export').textContent = 'Export decisions (' + decisions.size + ')';
    const status = $('status').textContent.replace(/· [\d,]+ decisions/, '· ' + decisions.size.toLocaleString('en') + ' decisions');
    $('status').textContent = status;
  }

  // -- large view ----------------------------------------------------------------------------------
  function openViewer() {
    if (currentRow() === undefined) return;
    viewer.hidden = false;
    fillViewer();
    $('v-close').focus();
  }

  function closeViewer() {
    viewer.hidden = true;
    highlight(true);
  }

  function fillViewer() {
    const i = currentRow();
    if (i === undefined) { closeViewer(); return; }
    const r = data[i];
    $('v-name').textContent = String(r[F.path]);
    const img = $('v-img');
    const ph = $('v-placeholder');
    const thumb = typeof r[F.thumb] === 'string' && r[F.thumb] ? 'thumbs/' + encodeURIComponent(r[F.thumb]) : null;
    let stage = 0;
    img.hidden = false;
    ph.hidden = true;
    img.onerror = () => {
      stage += 1;
      if (stage === 1 && thumb) { img.src = thumb; return; }
      img.hidden = true;
      ph.hidden = false;
      ph.textContent = placeholderText(i);
    };
    if (verdictOf(i) === 'error') {
      img.onerror = null;
      img.removeAttribute('src');
      img.hidden = true;
      ph.hidden = false;
      ph.textContent = placeholderText(i);
    } else {
      img.src = fileUrl(fullPath(i));
    }
    const dl = $('v-fields');
    const items = [];
    const d = decisions.get(fullPath(i));
    items.push(['your decision', d || 'undecided']);
    items.push(['full path', fullPath(i)]);
    for (const name of meta.fields) {
      if (name === 'path' || name === 'provenance_detail' || name === 'thumb' || name === 'thumb_note') continue;
      let value = r[F[name]];
      if (value === null || value === undefined || value === '') continue;
      if (name === 'size_bytes') value = value.toLocaleString('en') + ' bytes';
      else if (typeof value === 'object') value = JSON.stringify(value);
      items.push([name, value]);
    }
    if (r[F.thumb_note]) items.push(['preview', r[F.thumb_note]]);
    const nodes = [];
    for (const [k, v] of items) { nodes.push(el('dt', null, k)); nodes.push(el('dd', null, v)); }
    dl.replaceChildren(...nodes);
    const detail = r[F.provenance_detail];
    let text = '';
    if (detail !== null && detail !== undefined && detail !== '') {
      try { text = 'provenance detail\n' + JSON.stringify(JSON.parse(detail), null, 2); }
      catch (e) { text = 'provenance detail\n' + String(detail); }
    }
    $('v-detail').textContent = text;
  }

  // -- export -------------------------------------------------------------------------------------
  function csvField(s) { return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }

  function exportCsv() {
    const keys = Array.from(decisions.keys()).sort();
    const lines = ['path,label'].concat(keys.map((k) => csvField(k) + ',' + decisions.get(k)));
    const blob = new Blob([lines.join('\r\n') + '\r\n'], { type: 'text/csv' });
    const a = el('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'decisions.csv';
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  }

  // -- controls -------------------------------------------------------------------------------------
  function fillSelect(select, counts) {
    for (const [value, n] of Object.entries(counts).sort((a, b) => b[1] - a[1])) {
      const option = el('option', null, value + ' (' + n.toLocaleString('en') + ')');
      option.value = value;
      select.appendChild(option);
    }
  }
  fillSelect($('f-verdict'), meta.verdicts);
  if (meta.has_provenance) {
    const counts = {};
    for (let i = 0; i < data.length; i++) { const p = provOf(i); counts[p] = (counts[p] || 0) + 1; }
    fillSelect($('f-prov'), counts);
  } else {
    $('prov-label').hidden = true;
  }
  const number = (id, fallback) => { const x = parseFloat($(id).value); return Number.isFinite(x) ? x : fallback; };
  let searchTimer = null;
  $('q').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.q = $('q').value.trim().toLowerCase(); refilter(); }, 120);
  });
  $('f-verdict').addEventListener('change', () => { state.verdict = $('f-verdict').value; refilter(); });
  $('f-prov').addEventListener('change', () => { state.prov = $('f-prov').value; refilter(); });
  $('f-min').addEventListener('change', () => { state.min = number('f-min', 0); refilter(); });
  $('f-max').addEventListener('change', () => { state.max = number('f-max', 1); refilter(); });
  $('f-errors').addEventListener('change', () => { state.errors = $('f-errors').checked; refilter(); });
  $('f-decision').addEventListener('change', () => { state.decision = $('f-decision').value; refilter(); });
  $('sort').addEventListener('change', () => { state.sort = $('sort').value; order = null; refilter(); });
  $('export').addEventListener('click', exportCsv);
  $('prev').addEventListener('click', () => turn(-1));
  $('next').addEventListener('click', () => turn(1));
  $('v-close').addEventListener('click', closeViewer);
  $('v-synthetic').addEventListener('click', () => decide('synthetic'));
  $('v-real').addEventListener('click', () => decide('real'));
  $('v-clear').addEventListener('click', () => decide(null));
  viewer.addEventListener('click', (e) => { if (e.target === viewer) closeViewer(); });

  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    const typing = t && (t.tagName === 'INPUT' || t.tagName === 'SELECT' || t.tagName === 'TEXTAREA');
    if (e.key === 'Escape') {
      if (!viewer.hidden) closeViewer(); else if (typing) { t.blur(); highlight(true); }
      e.preventDefault();
      return;
    }
    if (typing) {
      if (e.key === 'Enter' && t.id === 'q') { state.q = t.value.trim().toLowerCase(); refilter(); t.blur(); highlight(true); }
      return;
    }
    if (t && (t.tagName === 'BUTTON' || t.tagName === 'A') && (e.key === 'Enter' || e.key === ' ')) return;
    const open = !viewer.hidden;
    switch (e.key) {
      case 'ArrowRight': move(1); break;
      case 'ArrowLeft': move(-1); break;
      case 'ArrowDown': move(open ? 1 : columns()); break;
      case 'ArrowUp': move(open ? -1 : -columns()); break;
      case 'Enter': if (open) closeViewer(); else openViewer(); break;
      case 's': case 'f': decide('synthetic'); break;
      case 'r': decide('real'); break;
      case 'u': decide(null); break;
      case 'n': case 'PageDown': turn(1); break;
      case 'p': case 'PageUp': turn(-1); break;
      case 'Home': move(-view.length); break;
      case 'End': move(view.length); break;
      case '/': if (open) closeViewer(); $('q').focus(); break;
      default: return;
    }
    e.preventDefault();
  });

  refilter();
  document.body.dataset.ready = 'true';
})();
