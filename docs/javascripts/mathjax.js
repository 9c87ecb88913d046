// MathJax configuration for the whole site, loaded before assets/mathjax/tex-svg.js.
//
// Only two kinds of elements hold math, and only those are typeset:
// - ".arithmatex": formulas in Markdown pages, wrapped by pymdownx.arithmatex (generic
//   mode) with \( \) and \[ \] delimiters;
// - ".jp-RenderedMarkdown": markdown cells of notebook pages rendered by mkdocs-jupyter,
//   which keep the notebook's $ and $$ delimiters.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  // SVG output needs no web fonts. Each formula carries its own glyphs ("local"), so
  // nothing is shared between pages when instant navigation swaps them.
  svg: { fontCache: "local" },
  // Typesetting is started below, on every page MkDocs Material shows.
  startup: { typeset: false },
};

const MATH_SELECTOR = ".arithmatex, .jp-RenderedMarkdown";

// Each page is typeset when MkDocs Material's document$ emits it: once per page load, and
// again after every page switch if instant navigation is ever turned on (it swaps the
// content without reloading the scripts). Calls are chained on MathJax.startup.promise so
// that they never overlap; waiting on that promise tells when the current page is done.
document$.subscribe(() => {
  const mathjax = window.MathJax;
  mathjax.startup.promise = mathjax.startup.promise
    .then(() => {
      mathjax.typesetClear();
      mathjax.texReset();
      return mathjax.typesetPromise(Array.from(document.querySelectorAll(MATH_SELECTOR)));
    })
    .catch((error) => console.error("MathJax typesetting failed:", error));
});
