// Typesets the maths that pymdownx.arithmatex (generic mode) leaves in the page:
// <span class="arithmatex">\(...\)</span> inline and <div class="arithmatex">\[...\]</div> display.
// Only those elements are touched, so a "$" in prose or code is never taken for maths. Headings
// with maths reach the table of contents as plain "\(...\)" text, typeset there by auto-render.
document$.subscribe(({ body }) => {
  for (const el of body.querySelectorAll(".arithmatex")) {
    const tex = el.textContent.trim();
    const display = tex.startsWith("\\[");
    katex.render(tex.slice(2, -2), el, { displayMode: display, throwOnError: false });
  }
  for (const toc of body.querySelectorAll(".md-nav--secondary")) {
    renderMathInElement(toc, {
      delimiters: [{ left: "\\(", right: "\\)", display: false }],
      throwOnError: false,
    });
  }
});
