// Copy buttons: <button class="copy" data-copy="ELEMENT-ID" data-done="Copied">. No inline script
// anywhere (the console's Content-Security-Policy allows scripts from this origin only).
"use strict";
document.addEventListener("click", function (ev) {
  var btn = ev.target.closest ? ev.target.closest("button.copy") : null;
  if (!btn) return;
  var el = document.getElementById(btn.getAttribute("data-copy"));
  if (!el) return;
  var text = el.textContent;
  var done = function () {
    var label = btn.textContent;
    btn.textContent = btn.getAttribute("data-done") || "Copied";
    btn.setAttribute("data-copied", "1");
    setTimeout(function () { btn.textContent = label; }, 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { fallback(el); done(); });
  } else {
    fallback(el);
    done();
  }
});

function fallback(el) {
  var range = document.createRange();
  range.selectNodeContents(el);
  var sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
  try { document.execCommand("copy"); } catch (e) { /* the text stays selected for Ctrl+C */ }
}
