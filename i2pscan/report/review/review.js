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

  // -- what is shown: control and bidi characters escaped visibly (a name's true bytes stay in the data) --
  const HIDDEN = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g;
  function shown(s) { return String(s).replace(HIDDEN, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0')); }

  // -- a file's identity: its row and its path's exact bytes (base64 when they are not UTF-8) -------------
  const sep = meta.sep || '/';
  const utf8 = new TextEncoder();
  function isAbsolute(p) { return p.startsWith('/') || (sep === '\\' && (p.startsWith('\\') || /^[A-Za-z]:[\\/]/.test(p))); }
  function fromB64(b64) { const bin = atob(b64); const out = new Uint8Array(bin.length); for (let k = 0; k < bin.length; k++) out[k] = bin.charCodeAt(k); return out; }
  function toB64(bytes) { let s = ''; for (let k = 0; k < bytes.length; k++) s += String.fromCharCode(bytes[k]); return btoa(s); }
  function pathBytes(i) { const raw = data[i][F.path_raw]; return raw ? fromB64(raw) : utf8.encode(String(data[i][F.path])); }
  function fullBytes(i) {
    const p = pathBytes(i);
    if (isAbsolute(String(data[i][F.path]))) return p;
    const root = utf8.encode(meta.root.endsWith(sep) ? meta.root : meta.root + sep);
    const out = new Uint8Array(root.length + p.length);
    out.set(root, 0); out.set(p, root.length);
    return out;
  }
  function fullPath(i) { const p = String(data[i][F.path]); return isAbsolute(p) ? p : (meta.root.endsWith(sep) ? meta.root + p : meta.root + sep + p); }
  function keyOf(i) { const raw = data[i][F.path_raw]; return i + '|' + (raw ? 'b:' + raw : 't:' + data[i][F.path]); }

  // -- decisions, kept in this browser under the report's identity: {label, note, reviewer, at} per file --
  const KEY = 'i2pscan-review:' + meta.report_id;
  let decisions = new Map();
  let storageNote = '';
  try {
    const saved = JSON.parse(window.localStorage.getItem(KEY) || '{}');
    decisions = new Map(Object.entries(saved).filter(([k, v]) => v && typeof v === 'object' && k.includes('|') &&
      (v.label === 'synthetic' || v.label === 'real' || (v.label === null && typeof v.note === 'string'))));
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
  function labelOf(i) { const d = decisions.get(keyOf(i)); return d ? d.label : null; }
  function labelled() { let n = 0; for (const d of decisions.values()) if (d.label) n++; return n; }
  function reviewer() { return $('reviewer').value.trim(); }
  function record(i, label, note) {
    const key = keyOf(i);
    const old = decisions.get(key) || { label: null, note: '' };
    const next = { label: label === undefined ? old.label : label, note: note === undefined ? old.note : note,
      reviewer: reviewer(), at: new Date().toISOString() };
    if (!next.label && !next.note) decisions.delete(key); else decisions.set(key, next);
  }

  // -- row helpers ------------------------------------------------------------------------------
  function fileUrl(i) {
    let s = '';
    for (const b of fullBytes(i)) {
      const c = String.fromCharCode(b);
      s += b < 128 && /[A-Za-z0-9\-._~\/:]/.test(c) ? c : '%' + b.toString(16).toUpperCase().padStart(2, '0');
    }
    if (sep === '\\') s = s.replace(/%5C/g, '/');
    return 'file://' + (s.startsWith('/') ? s : '/' + s);
  }
  function baseName(p) { const parts = p.split(sep === '\\' ? /[\\/]/ : /\//); return parts[parts.length - 1] || p; }
  function verdictOf(i) { return String(data[i][F.verdict]); }
  function scoreOf(i) { const s = data[i][F.score]; return typeof s === 'number' ? s : null; }
  function provOf(i) { const p = data[i][F.provenance]; return p === null || p === undefined ? '(missing)' : String(p); }
  function valueOf(i, name) { const v = F[name] === undefined ? null : data[i][F[name]]; return v === null || v === undefined || v === '' ? '(none)' : String(v); }
  function reasonOf(i) {
    const r = data[i];
    if (F.reason !== undefined && r[F.reason]) return String(r[F.reason]);
    const s = scoreOf(i);
    if (s === null || typeof meta.threshold !== 'number') return '';
    return 'model score ' + s.toPrecision(3) + (s >= meta.threshold ? ' ≥ ' : ' < ') + 'threshold ' + meta.threshold.toPrecision(3);
  }
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
    if (text !== undefined && text !== null) node.textContent = shown(text);
    return node;
  }

  // -- state: filters, order, page, selection -----------------------------------------------------
  const state = { q: '', verdict: '', prov: '', gen: '', c2pa: '', by: '', min: 0, max: 1, errors: false, decision: '', sort: 'review',
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
    if (state.gen && valueOf(i, 'generator') !== state.gen) return false;
    if (state.c2pa && valueOf(i, 'c2pa') !== state.c2pa) return false;
    if (state.by && valueOf(i, 'flagged_by') !== state.by) return false;
    if (state.min > 0 || state.max < 1) {
      const s = scoreOf(i);
      if (s === null || s < state.min || s > state.max) return false;
    }
    if (state.decision) {
      const d = labelOf(i) || 'none';
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
    node.title = shown(r[F.path]);
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
      if (r[F.c2pa]) line.appendChild(el('span', 'badge c2pa-' + String(r[F.c2pa]).replace(/[^a-z-]/g, ''), 'c2pa ' + r[F.c2pa]));
    }
    const d = labelOf(i);
    if (d) { line.appendChild(el('span', 'badge decision', 'you: ' + d)); node.classList.add('d-' + d); }
    node.appendChild(line);
    const why = reasonOf(i);
    if (why) node.appendChild(el('div', 'reason', (r[F.flagged_by] ? 'flagged by ' + r[F.flagged_by] + ': ' : '') + why));
    node.appendChild(el('div', 'name', baseName(String(r[F.path]))));
    const facts = [humanSize(r[F.size_bytes])];
    if (r[F.width] && r[F.height]) facts.push(r[F.width] + '×' + r[F.height]);
    if (r[F.format]) facts.push(r[F.format]);
    node.appendChild(el('div', 'facts', facts.filter(Boolean).join(' · ')));
    if (r[F.error]) node.appendChild(el('div', 'error', r[F.error]));
    const rec = decisions.get(keyOf(i));
    if (rec && rec.note) node.appendChild(el('div', 'note', 'note: ' + rec.note));
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
      data.length.toLocaleString('en') + ' files) · ' + labelled().toLocaleString('en') + ' decisions';
    if (storageNote) text += ' · ' + storageNote;
    $('status').textContent = text;
    $('page-info').textContent = 'page ' + (state.page + 1) + ' of ' + pages();
    $('prev').disabled = state.page === 0;
    $('next').disabled = state.page >= pages() - 1;
    $('export').textContent = 'Export decisions (' + labelled() + ')';
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
    record(i, label);
    saveDecisions();
    const pos = state.sel;
    const node = grid.children[pos];
    if (node) node.replaceWith(card(i, pos));
    renderCounts();
    highlight(true);
    if (!viewer.hidden) fillViewer();
  }

  function renderCounts() {
    $('export').textContent = 'Export decisions (' + labelled() + ')';
    const status = $('status').textContent.replace(/· [\d,]+ decisions/, '· ' + labelled().toLocaleString('en') + ' decisions');
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
    $('v-name').textContent = shown(r[F.path]);
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
      img.src = fileUrl(i);
    }
    const dl = $('v-fields');
    const items = [];
    const rec = decisions.get(keyOf(i));
    items.push(['your decision', rec && rec.label ? rec.label + (rec.reviewer ? ' (' + rec.reviewer + ', ' + rec.at + ')' : '') : 'undecided']);
    items.push(['why', reasonOf(i) || '–']);
    items.push(['flagged by', r[F.flagged_by] || 'not flagged']);
    items.push(['full path', fullPath(i)]);
    const LABELS = { verdict: 'verdict', score: 'score', logit: 'logit', format: 'format', width: 'width', height: 'height',
      size_bytes: 'size', mtime: 'modified', sha256: 'sha256', error: 'error', provenance: 'provenance',
      generator: 'generator', c2pa: 'C2PA' };
    for (const name of meta.fields) {
      if (['path', 'path_raw', 'provenance_detail', 'thumb', 'thumb_note', 'reason', 'flagged_by'].includes(name)) continue;
      let value = r[F[name]];
      if (value === null || value === undefined || value === '') continue;
      if (name === 'size_bytes') value = value.toLocaleString('en') + ' bytes';
      else if (name === 'c2pa') value = value + ' — ' + (C2PA_STATES[value] || '');
      else if (typeof value === 'object') value = JSON.stringify(value);
      items.push([LABELS[name] || name.replace(/_/g, ' '), value]);
    }
    if (r[F.thumb_note]) items.push(['preview', r[F.thumb_note]]);
    dl.replaceChildren(...pairs(items));
    $('v-note').value = rec && rec.note ? rec.note : '';
    const detail = r[F.provenance_detail];
    let parsed = null;
    let text = '';
    if (detail !== null && detail !== undefined && detail !== '') {
      try { parsed = JSON.parse(detail); text = JSON.stringify(parsed, null, 2); } catch (e) { text = String(detail); }
    }
    $('v-evidence').replaceChildren(...evidence(parsed));
    $('v-detail').textContent = text;
    $('v-raw').hidden = !text;
  }

  const C2PA_STATES = {
    trusted: 'signed by a signer on the trust list given (--c2pa-trust)',
    'valid-untrusted': 'signature and hashes hold, but the signer is on no trust list given: anyone can sign so',
    valid: 'signature and hashes hold (a report before 0.2: the signer was not checked against a trust list)',
    invalid: 'the manifest does not match the file (changed after signing?): its claims count for nothing',
    error: 'a manifest the C2PA SDK could not read',
  };

  function pairs(items) {
    const nodes = [];
    for (const [k, v] of items) { nodes.push(el('dt', null, k)); nodes.push(el('dd', null, v)); }
    return nodes;
  }

  function section(title, items) {
    const rows = items.filter(([, v]) => v !== null && v !== undefined && v !== '' && !(Array.isArray(v) && !v.length));
    if (!rows.length) return [];
    const dl = el('dl');
    dl.replaceChildren(...pairs(rows.map(([k, v]) => [k, Array.isArray(v) ? v.join(', ') : typeof v === 'object' ? JSON.stringify(v) : v])));
    return [el('h3', null, title), dl];
  }

  function unique(list) { return Array.isArray(list) ? Array.from(new Set(list.map(String))) : list; }

  function evidence(d) {
    if (!d || typeof d !== 'object') return [];
    const out = [];
    const c = d.c2pa && typeof d.c2pa === 'object' ? d.c2pa : null;
    if (c) {
      const signer = c.signer || {};
      out.push(...section('C2PA manifest', [
        ['state', c.state ? c.state + ' — ' + (C2PA_STATES[c.state] || '') : null], ['signed by', signer.common_name],
        ['issuer', signer.issuer], ['signed at', signer.time], ['made with', c.claim_generator],
        ['declares', unique(c.source_types)], ['AI tools', unique(c.software_agents)],
        ['ingredients declare', unique(c.ingredient_source_types)],
        ['ingredients', (c.ingredients || []).map((g) => (g.title || '?') + (g.source_types && g.source_types.length ? ' (' + unique(g.source_types).join(', ') + ')' : ''))],
        ['status codes', unique(c.codes)], ['error', c.error]]));
    }
    const x = d.xmp && typeof d.xmp === 'object' ? d.xmp : null;
    if (x) {
      out.push(...section('XMP', [['digital source type', unique(x.digital_source_types)], ['AI system', x.ai_system],
        ['creator tool', x.creator_tool], ['software', x.software], ['description', x.description], ['title', x.title],
        ['credit', x.credit], ['camera', [x.make, x.model].filter(Boolean).join(' ')]]));
    }
    const t = d.text && typeof d.text === 'object' ? d.text : null;
    if (t) {
      out.push(...section('Generator metadata (text chunks)', [['found in', t.keys], ['prompt', t.prompt],
        ['model', t.model], ['nodes', t.nodes], ['software', t.software], ['text', t.text], ['chunks', t.chunks]]));
    }
    const e = d.exif && typeof d.exif === 'object' ? d.exif : null;
    if (e) {
      out.push(...section('EXIF', [['camera', [e.make, e.model].filter(Boolean).join(' ')], ['software', e.software],
        ['taken', e.datetimeoriginal], ['lens', e.lensmodel], ['user comment', e.usercomment],
        ['description', e.imagedescription], ['artist', e.artist], ['maker note', e.makernote], ['prompt', e.prompt],
        ['model', e.model && !e.make ? e.model : null]]));
    }
    out.push(...section('Evidence', [['matched', d.matched], ['notes', d.notes]]));
    return out;
  }

  // -- export: a labelled manifest (path,label first) with note, reviewer, time, row and the path's bytes --
  function csvField(s) { return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  function csvBytes(bytes) {  // the path's exact bytes, quoted as CSV quotes text
    if (!bytes.some((b) => b === 0x22 || b === 0x2c || b === 0x0a || b === 0x0d)) return bytes;
    const out = [0x22];
    for (const b of bytes) { if (b === 0x22) out.push(0x22); out.push(b); }
    out.push(0x22);
    return new Uint8Array(out);
  }

  function exportCsv() {
    const parts = ['path,label,note,reviewer,decided_at,row,path_b64\r\n'];
    const rows = [];
    for (const [key, d] of decisions) if (d.label) rows.push([Number(key.split('|', 1)[0]), d]);
    rows.sort((a, b) => a[0] - b[0]);
    for (const [i, d] of rows) {
      if (!(i >= 0 && i < data.length)) continue;
      const bytes = fullBytes(i);
      parts.push(csvBytes(bytes));
      parts.push(',' + d.label + ',' + csvField(d.note || '') + ',' + csvField(d.reviewer || '') + ',' + (d.at || '') +
        ',' + i + ',' + toB64(bytes) + '\r\n');
    }
    const blob = new Blob(parts, { type: 'text/csv' });
    const a = el('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'decisions' + (reviewer() ? '-' + reviewer().replace(/[^A-Za-z0-9_-]+/g, '_') : '') + '.csv';
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  }

  function bulk(label) {
    for (const i of view) record(i, label);
    saveDecisions();
    refilter(true);
    $('status').textContent += ' · marked ' + view.length.toLocaleString('en') + ' filtered file(s) ' + (label || 'undecided');
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
  function countsOf(value) {
    const counts = {};
    for (let i = 0; i < data.length; i++) { const v = value(i); counts[v] = (counts[v] || 0) + 1; }
    return counts;
  }
  if (meta.has_provenance) {
    fillSelect($('f-prov'), countsOf(provOf));
    fillSelect($('f-gen'), countsOf((i) => valueOf(i, 'generator')));
    fillSelect($('f-c2pa'), countsOf((i) => valueOf(i, 'c2pa')));
  } else {
    for (const id of ['prov-label', 'gen-label', 'c2pa-label']) $(id).hidden = true;
  }
  if (F.flagged_by !== undefined) fillSelect($('f-by'), countsOf((i) => valueOf(i, 'flagged_by')));
  else $('by-label').hidden = true;
  try { $('reviewer').value = window.localStorage.getItem('i2pscan-reviewer') || ''; } catch (e) { /* no storage */ }
  $('reviewer').addEventListener('change', () => {
    try { window.localStorage.setItem('i2pscan-reviewer', reviewer()); } catch (e) { /* no storage */ }
  });
  const plots = $('plots-box');
  try { plots.open = window.localStorage.getItem('i2pscan-plots') === 'open'; } catch (e) { /* no storage */ }
  plots.addEventListener('toggle', () => {
    try { window.localStorage.setItem('i2pscan-plots', plots.open ? 'open' : 'closed'); } catch (e) { /* no storage */ }
  });
  const number = (id, fallback) => { const x = parseFloat($(id).value); return Number.isFinite(x) ? x : fallback; };
  let searchTimer = null;
  $('q').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.q = $('q').value.trim().toLowerCase(); refilter(); }, 120);
  });
  $('f-verdict').addEventListener('change', () => { state.verdict = $('f-verdict').value; refilter(); });
  $('f-prov').addEventListener('change', () => { state.prov = $('f-prov').value; refilter(); });
  $('f-gen').addEventListener('change', () => { state.gen = $('f-gen').value; refilter(); });
  $('f-c2pa').addEventListener('change', () => { state.c2pa = $('f-c2pa').value; refilter(); });
  $('f-by').addEventListener('change', () => { state.by = $('f-by').value; refilter(); });
  $('bulk-synthetic').addEventListener('click', () => bulk('synthetic'));
  $('bulk-real').addEventListener('click', () => bulk('real'));
  $('bulk-clear').addEventListener('click', () => bulk(null));
  $('v-note').addEventListener('input', () => {
    const i = currentRow();
    if (i === undefined) return;
    record(i, undefined, $('v-note').value);
    saveDecisions();
  });
  $('v-note').addEventListener('change', () => { const i = currentRow(); if (i !== undefined) { const node = grid.children[state.sel]; if (node) node.replaceWith(card(i, state.sel)); highlight(false); } });
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
      case 'm': if (!open) openViewer(); $('v-note').focus(); break;
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
