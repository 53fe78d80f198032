"""GET /docs: a self-contained API reference page rendered in the browser from /openapi.json (no CDN,
so it works on air-gapped installs)."""

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Voice by aiConnected API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:24px;color:#1d2330}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #ddd}code,pre{font:13px ui-monospace,monospace}
.op{border:1px solid #e3e6ec;border-radius:6px;margin:10px 0;padding:8px 12px}
.m{display:inline-block;min-width:64px;font-weight:700;text-transform:uppercase}
.get{color:#0a7}.post{color:#06c}.put{color:#a60}.patch{color:#a0a}.delete{color:#c22}
details pre{background:#f6f7f9;padding:8px;overflow:auto}small{color:#667}
</style></head><body>
<h1>Voice by aiConnected API</h1>
<p><small>Generated from the voice.v1 protos. Authenticate with <code>X-API-Key: vk_live_...</code> or
<code>Authorization: Bearer &lt;token&gt;</code> (POST /v1/auth/token). Errors are google.rpc.Status JSON.
Machine-readable: <a href="/openapi.json">/openapi.json</a>.</small></p>
<div id="ops">Loading...</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  const byTag = {};
  for (const [path, ops] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(ops))
      (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([method, path, op]);
  const el = document.getElementById('ops'); el.textContent = '';
  const esc = s => String(s).replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));
  for (const tag of Object.keys(byTag).sort()) {
    const h = document.createElement('h2'); h.textContent = tag; el.appendChild(h);
    for (const [method, path, op] of byTag[tag]) {
      const d = document.createElement('div'); d.className = 'op';
      const params = (op.parameters || []).map(p => `${esc(p.name)} (${p.in})`).join(', ');
      const body = op.requestBody
        ? JSON.stringify(op.requestBody.content['application/json'].schema, null, 2) : '';
      const ok = JSON.stringify(Object.values(op.responses)[0].content, null, 2);
      d.innerHTML = `<span class="m ${method}">${method}</span> <code>${esc(path)}</code>`
        + ` <small>${esc(op.operationId)}</small>`
        + (params ? `<div><small>parameters: ${params}</small></div>` : '')
        + (body ? `<details><summary>request body</summary><pre>${esc(body)}</pre></details>` : '')
        + `<details><summary>response</summary><pre>${esc(ok)}</pre></details>`;
      el.appendChild(d);
    }
  }
  const s = document.createElement('h2'); s.textContent = 'Schemas'; el.appendChild(s);
  const pre = document.createElement('pre');
  pre.textContent = JSON.stringify(doc.components.schemas, null, 2);
  const det = document.createElement('details');
  det.appendChild(document.createElement('summary')).textContent = 'all schemas';
  det.appendChild(pre); el.appendChild(det);
});
</script></body></html>
"""
