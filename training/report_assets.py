"""The inline CSS and JavaScript of `semiflow report` (no external file, no network fetch).

The script makes the flagged-flows table sortable (click a header) and filterable (one text
box, matched against every cell), and builds the analyst's feedback file in the page: the
rows marked benign become allow-list lines in the format plugin/allowlist.py writes and
zeek_scripts/allowlist.zeek reads, offered as a download (a data: URL, nothing is sent).
"""

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232a;
background:#f6f7f9}
header{background:#1d2b3a;color:#fff;padding:14px 28px}header h1{margin:0;font-size:22px}
header .meta{color:#b9c6d3;font-size:13px;margin-top:4px}
main{padding:8px 28px 40px;max-width:1500px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;margin:16px 0;
padding:12px 18px}
h2{font-size:17px;margin:4px 0 10px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:10px 16px;
min-width:120px}.card .v{font-size:22px;font-weight:600}.card .k{font-size:12px;color:#5b6875}
.card.alert .v{color:#b42318}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:14px}
img{max-width:100%}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{border-bottom:1px solid #e6e9ee;padding:4px 7px;text-align:left;white-space:nowrap}
th{background:#eef1f5;position:sticky;top:0;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:hover td{background:#f5f8fc}
.tablewrap{max-height:560px;overflow:auto;border:1px solid #e6e9ee}
.toolbar{display:flex;gap:10px;align-items:center;margin:8px 0;flex-wrap:wrap}
input[type=text],select,textarea{font:inherit;font-size:13px;padding:4px 6px;
border:1px solid #c4ccd5;border-radius:4px}
button{font:inherit;font-size:13px;padding:5px 12px;border-radius:4px;border:1px solid
#2e5c8a;background:#2e6da4;color:#fff;cursor:pointer}
.note{color:#5b6875;font-size:12.5px}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace}
textarea{width:100%;height:110px;font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:11.5px}
.expl{border-top:1px solid #e6e9ee;padding-top:8px;margin-top:10px}
.pill{display:inline-block;border-radius:9px;padding:0 7px;font-size:11.5px;
background:#fde8e7;color:#b42318}
"""

JS = r"""
(function(){
'use strict';
var table=document.getElementById('flagged');
if(!table){return;}
var tbody=table.tBodies[0];
var filter=document.getElementById('flow-filter');
var count=document.getElementById('flow-count');
function cellValue(tr,i){var td=tr.cells[i];var v=td.getAttribute('data-v');
  return v!==null?parseFloat(v):td.textContent.toLowerCase();}
Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){
  if(th.classList.contains('nosort')){return;}
  th.addEventListener('click',function(){
    var asc=!th.classList.contains('sorted-asc');
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){
      h.classList.remove('sorted-asc','sorted-desc');});
    th.classList.add(asc?'sorted-asc':'sorted-desc');
    var rows=Array.prototype.slice.call(tbody.rows);
    rows.sort(function(a,b){var x=cellValue(a,i),y=cellValue(b,i);
      if(x<y){return asc?-1:1;}if(x>y){return asc?1:-1;}return 0;});
    rows.forEach(function(r){tbody.appendChild(r);});
  });
});
function applyFilter(){
  var q=filter.value.toLowerCase().trim();var n=0;
  Array.prototype.forEach.call(tbody.rows,function(tr){
    var show=!q||tr.textContent.toLowerCase().indexOf(q)>=0;
    tr.style.display=show?'':'none';if(show){n++;}});
  count.textContent=n+' of '+tbody.rows.length+' flows shown';
}
filter.addEventListener('input',applyFilter);applyFilter();

var FIELDS=['rule','uid','host','service','orig_h','orig_p','resp_h','resp_p','proto','ts',
  'reason','analyst','added','expires'];
var TYPES=['string','string','subnet','port','addr','port','addr','port','string','time',
  'string','string','time','time'];
function clean(s){s=String(s===undefined||s===null?'':s).replace(/[\t\r\n\\]/g,' ').trim();
  return s===''?'-':(s==='-'?'\\x2d':s);}
function ruleId(key){var h=0x811c9dc5;for(var i=0;i<key.length;i++){h^=key.charCodeAt(i);
  h=Math.imul(h,0x01000193)>>>0;}return 'r'+('00000000'+h.toString(16)).slice(-8)+'w';}
function hostNet(a){return a.indexOf(':')>=0?a+'/128':a+'/32';}
function feedbackText(){
  var reason=document.getElementById('fb-reason').value||'marked benign in report';
  var analyst=document.getElementById('fb-analyst').value||'analyst';
  var days=parseFloat(document.getElementById('fb-expires').value);
  var now=Date.now()/1000;var exp=days>0?(now+days*86400).toFixed(6):'-';
  var lines=['#separator \\x09','#path semiflow_allowlist','#fields\t'+FIELDS.join('\t'),
    '#types\t'+TYPES.join('\t')];
  var n=0;
  Array.prototype.forEach.call(tbody.rows,function(tr){
    var sel=tr.querySelector('select.mark');if(!sel||!sel.value){return;}
    var d=tr.dataset;var proto=d.proto||'tcp';
    var r={uid:'-',host:'-',service:'-',orig_h:'-',orig_p:'-',resp_h:'-',resp_p:'-',
      proto:'-',ts:'-'};
    if(sel.value==='flow'){r.uid=d.uid;r.orig_h=d.origH;r.orig_p=d.origP+'/'+proto;
      r.resp_h=d.respH;r.resp_p=d.respP+'/'+proto;r.proto=proto;r.ts=d.ts;}
    else if(sel.value==='service'){r.host=hostNet(d.respH);r.service=d.respP+'/'+proto;}
    else if(sel.value==='client'){r.host=hostNet(d.origH);}
    var id=ruleId([r.uid,r.host,r.service].join('|'));
    lines.push([id,r.uid,r.host,r.service,r.orig_h,r.orig_p,r.resp_h,r.resp_p,r.proto,r.ts,
      clean(reason),clean(analyst),now.toFixed(6),exp].join('\t'));n++;
  });
  return {text:lines.join('\n')+'\n',rules:n};
}
window.semiflowFeedback=feedbackText;
var out=document.getElementById('fb-text');var link=document.getElementById('fb-link');
function refresh(){var f=feedbackText();out.value=f.text;
  document.getElementById('fb-count').textContent=f.rules+' rule(s)';
  link.href='data:text/tab-separated-values;charset=utf-8,'+encodeURIComponent(f.text);}
document.getElementById('fb-build').addEventListener('click',function(){refresh();
  link.click();});
Array.prototype.forEach.call(document.querySelectorAll('select.mark,#fb-reason,#fb-analyst,'
  +'#fb-expires'),function(el){el.addEventListener('change',refresh);});
refresh();
})();
"""
