// Small DOM helpers shared by the pages.

// element("p", {class: "x"}, "text", child, ...) → <p class="x">text…</p>
export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// A number with `digits` decimals, or "–" when the API sent something else (or nothing).
export function fixed(value, digits = 2) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

export function formatMs(ms) {
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

export function formatDate(text) {
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? text : date.toLocaleString();
}

// Position in [0, 100] % of a cosine similarity on a 0…1 scale (negative ones at the left end).
function percent(value) {
  return Math.max(0, Math.min(100, value * 100));
}

// A bar from 0 to 1: red below the threshold, green above, a marker at the similarity.
export function similarityScale(similarity, threshold) {
  const scale = element("div", {
    class: "scale",
    role: "img",
    "aria-label": `Similarity ${similarity.toFixed(3)} on a scale from 0 to 1; threshold ${threshold.toFixed(3)}`,
  });
  scale.style.setProperty("--t", `${percent(threshold)}%`);
  const mark = element("div", { class: "mark" }, element("span", {}, `similarity ${similarity.toFixed(2)}`));
  mark.style.left = `${percent(similarity)}%`;
  if (percent(similarity) > 70) mark.classList.add("right");
  const limit = element("div", { class: "mark threshold" }, element("span", {}, `threshold ${threshold.toFixed(2)}`));
  limit.style.left = `${percent(threshold)}%`;
  if (percent(threshold) > 70) limit.classList.add("right");
  scale.append(limit, mark);
  const ends = element("div", { class: "scale-ends", "aria-hidden": "true" }, element("span", {}, "0 · different"), element("span", {}, "1 · identical"));
  return element("div", {}, scale, ends);
}

// A small bar of a similarity in [0, 1] next to a number.
export function similarityBar(similarity) {
  const fill = element("span");
  fill.style.width = `${percent(similarity)}%`;
  return element("span", { class: "bar", "aria-hidden": "true" }, fill);
}

// Ask "Are you sure?" in the page's own dialog; resolves true when the person confirms.
export function confirmAction(message, action = "Delete") {
  const dialog = document.getElementById("confirm-dialog");
  document.getElementById("confirm-message").textContent = message;
  document.getElementById("confirm-yes").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
  });
}

export function showNotice(text, kind = "error") {
  const notice = document.getElementById("notice");
  if (!text) {
    notice.hidden = true;
    notice.replaceChildren();
    return;
  }
  notice.className = `notice ${kind === "info" ? "info" : ""}`;
  if (typeof text === "string") notice.textContent = text;
  else notice.replaceChildren(text);
  notice.hidden = false;
}
