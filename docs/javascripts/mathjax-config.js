// MathJax 3 for pymdownx.arithmatex (generic: true), served by the site itself
// (docs/hooks.py copies the pinned npm package into javascripts/mathjax/; no CDN).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// MathJax typesets the page it is loaded with by itself. Material's document$ also emits then; it
// emits again only if instant navigation (not enabled in mkdocs.yml) swaps a page in without a
// reload: typeset that page once MathJax is ready. (Resetting MathJax's caches on the first emission,
// during MathJax's own first typeset, drops the glyphs' CSS and leaves the math invisible.)
if (typeof document$ !== "undefined") {
  let first = true;
  document$.subscribe(() => {
    if (first) { first = false; return; }
    if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) return;
    MathJax.startup.promise = MathJax.startup.promise.then(() => {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      return MathJax.typesetPromise();
    });
  });
}
