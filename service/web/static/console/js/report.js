// Gallery page, report section: GET /gallery/report in words (counts, suspected duplicate
// identities, impostor tail, thresholds by FPIR) and GET /gallery/report.png as an image.
// The report reads the whole gallery, so it runs when asked, not each time the page shows.

import { apiKey, apiUrl, request } from "./api.js";
import { openIdentity } from "./gallery.js";
import { errorElement } from "./messages.js";
import { element, fixed } from "./ui.js";

let plotUrl = null;

export function setupReport() {
  document.getElementById("report-run").addEventListener("click", runReport);
}

// The PNG needs the API key header, which an <img src> cannot send: fetch it, show a blob: URL
// (the console's Content-Security-Policy allows blob: images).
async function loadPlot() {
  const headers = {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(apiUrl("gallery/report.png"), { headers });
  if (!response.ok) return null;
  if (plotUrl) URL.revokeObjectURL(plotUrl);
  plotUrl = URL.createObjectURL(await response.blob());
  return element("img", {
    src: plotUrl,
    class: "report-plot",
    alt: "FPIR against threshold: the share of enrolled people, searched as strangers, whose best score against everyone else reaches each threshold (log scale)",
  });
}

function definitions(rows) {
  return element("dl", { class: "status-list" }, ...rows.flatMap(([name, value]) => [element("dt", {}, name), element("dd", {}, value)]));
}

// A person's name that opens their faces in the detail pane, to compare the two by eye.
function personButton(name, id) {
  const button = element("button", { type: "button", class: "link" }, name);
  button.addEventListener("click", () => openIdentity(id));
  return button;
}

function duplicatesElement(duplicates) {
  const heading = element("h3", {}, `Suspected duplicates (score ≥ ${fixed(duplicates.min_score, 3)})`);
  const notes = [element("p", { class: "hint" }, `${duplicates.note}. Threshold: ${duplicates.min_score_source}.`)];
  if (duplicates.unavailable) return element("div", {}, heading, ...notes, element("p", {}, `Not searched: ${duplicates.unavailable}`));
  if (!duplicates.pairs.length) return element("div", {}, heading, ...notes, element("p", { id: "report-no-duplicates" }, "None found: no two people's faces match that closely."));
  const rows = duplicates.pairs.map((pair) =>
    element(
      "tr",
      {},
      element("td", {}, fixed(pair.score, 3)),
      element("td", {}, personButton(pair.name_a, pair.identity_a), element("br"), element("small", {}, pair.identity_a)),
      element("td", {}, personButton(pair.name_b, pair.identity_b), element("br"), element("small", {}, pair.identity_b)),
    ),
  );
  const table = element(
    "table",
    { id: "report-duplicates" },
    element("caption", { class: "visually-hidden" }, "Pairs of people whose faces match above the strict threshold"),
    element("thead", {}, element("tr", {}, element("th", { scope: "col" }, "Score"), element("th", { scope: "col" }, "Person"), element("th", { scope: "col" }, "Enrolled again as"))),
    element("tbody", {}, ...rows),
  );
  if (duplicates.pairs_found > duplicates.pairs.length) notes.push(element("p", { class: "hint" }, `${duplicates.pairs_found} pairs in all; the best are listed.`));
  return element("div", {}, heading, ...notes, table);
}

function fpirElement(report) {
  const fpir = report.fpir;
  const heading = element("h3", {}, "Thresholds for identification (by FPIR)");
  if (fpir.unavailable) return element("div", {}, heading, element("p", {}, `Not measured: ${fpir.unavailable}`));
  const tail = fpir.stranger_scores;
  const quantiles = Object.entries(tail.quantiles).map(([q, score]) => `q${q} ${fixed(score, 3)}`).join(", ");
  const rows = fpir.thresholds.map((row) => [
    `FPIR ${row.target_fpir}`,
    row.unsupported ? `not supported: ${row.unsupported}` : `${fixed(row.threshold, 3)} (measured ${row.fpir}, ${row.method})`,
  ]);
  return element(
    "div",
    {},
    heading,
    element("p", { class: "hint" }, `${fpir.probes} of ${fpir.gallery_size} people searched as strangers; 1:1 threshold ${fixed(report.threshold_1to1, 3)}.`),
    definitions([["Strangers' best scores", `${quantiles || "too few"}; highest ${tail.top.map((s) => fixed(s, 3)).join(", ") || "–"}`], ...rows]),
  );
}

async function runReport() {
  const body = document.getElementById("report-body");
  try {
    const report = await request("gallery/report");
    const spread = report.faces_per_identity;
    const histogram = report.faces_per_identity_histogram.filter((bin) => bin.count > 0).map((bin) => `${bin.label}: ${bin.count}`).join(", ");
    const norm = report.quality.embedding_norm;
    const counts = definitions([
      ["People", String(report.identities)],
      ["Faces", `${report.faces} (${Object.entries(report.faces_per_model).map(([model, n]) => `${n} from ${model}`).join(", ") || "none"})`],
      ["Faces per person", `min ${spread.min ?? "–"}, median ${spread.median ?? "–"}, max ${spread.max ?? "–"} (${histogram || "nobody"})`],
      ["Face quality (embedding norm)", `min ${fixed(norm.min)}, median ${fixed(norm.median)}, max ${fixed(norm.max)}`],
    ]);
    body.replaceChildren(counts, duplicatesElement(report.duplicates), fpirElement(report));
    const plot = await loadPlot();
    if (plot) body.append(plot);
  } catch (error) {
    body.replaceChildren(errorElement(error, "Could not make the report"));
  }
}
