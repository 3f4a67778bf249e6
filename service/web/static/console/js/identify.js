// Identify page: one photo → every face searched in the gallery (POST /identify, all faces).

import { photoForm, request } from "./api.js";
import { errorElement } from "./messages.js";
import { clearCanvas, drawFaces, dropZone, forgetImage, loadImage } from "./photo.js";
import { qualityElement } from "./quality.js";
import { element, similarityBar } from "./ui.js";

const TOP_K = 3;

export function setupIdentify() {
  const canvas = document.getElementById("identify-canvas");
  const result = document.getElementById("identify-result");
  let image = null;
  let run = 0;

  async function choose(file) {
    const mine = ++run;
    // The previous answer goes before anything is awaited: it must never stand beside a new photo.
    result.setAttribute("aria-busy", "true");
    result.replaceChildren(element("p", { class: "hint" }, "Searching the gallery…"));
    forgetImage(image);
    const loaded = await loadImage(file);
    if (mine !== run) return forgetImage(loaded);
    image = loaded;
    drawFaces(canvas, image, { label: `${file.name}: searching` });
    try {
      const answer = await request("identify", {
        method: "POST",
        body: photoForm(file, { all_faces: true, top_k: TOP_K }),
      });
      if (mine !== run) return;
      const faces = answer.results.map((r) => r.face);
      const known = answer.results.map((r, i) => (r.identity ? i : -1)).filter((i) => i >= 0);
      drawFaces(canvas, image, { faces, highlight: known, label: `${file.name}: ${faces.length} face(s) boxed` });
      result.replaceChildren(
        element("p", {}, `${faces.length} face${faces.length === 1 ? "" : "s"}; threshold ${answer.threshold.toFixed(3)}.`),
        element("ol", { class: "face-results" }, ...answer.results.map(faceResult)),
      );
    } catch (error) {
      if (mine !== run) return;
      drawFaces(canvas, image, { label: `${file.name}: no result` });
      result.replaceChildren(errorElement(error));
    } finally {
      if (mine === run) result.setAttribute("aria-busy", "false");
    }
  }

  clearCanvas(canvas, "No photo chosen", "No photo yet");
  dropZone(document.getElementById("identify-drop"), document.getElementById("identify-file"), choose);
}

function faceResult(result, index) {
  const who = result.identity
    ? element("p", { class: "who", "data-testid": "who" }, result.identity.name)
    : element("p", { class: "who unknown", "data-testid": "who" }, "Unknown");
  const quality = element("p", {}, "Quality ", qualityElement(result.face.quality));
  const candidates = result.candidates.length
    ? element(
        "ol",
        { class: "candidates", "aria-label": `Closest people to face ${index + 1}` },
        ...result.candidates.map((c) =>
          element("li", {}, `${c.name}: ${c.similarity.toFixed(3)}`, similarityBar(c.similarity)),
        ),
      )
    : element("p", { class: "hint" }, "The gallery is empty.");
  return element("li", {}, element("h3", {}, `Face ${index + 1}`), who, candidates, quality);
}
