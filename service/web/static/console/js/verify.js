// Verify page: two photos → every face (POST /detect), the decision (POST /verify).

import { photoForm, request } from "./api.js";
import { errorElement } from "./messages.js";
import { clearCanvas, drawFaces, dropZone, forgetImage, loadImage, matchingFace } from "./photo.js";
import { livenessElement } from "./liveness.js";
import { qualityElement } from "./quality.js";
import { element, fixed, formatMs, similarityScale } from "./ui.js";

const STAGES = ["decode", "detect", "align", "embed", "liveness", "total"];

export function setupVerify() {
  const slots = [1, 2].map((n) => ({
    n,
    file: null,
    image: null,
    detected: null,
    chosen: null,
    canvas: document.getElementById(`verify-canvas-${n}`),
    info: document.getElementById(`verify-info-${n}`),
  }));
  const result = document.getElementById("verify-result");
  const again = document.getElementById("verify-run");
  let run = 0;

  function redraw(slot) {
    drawFaces(slot.canvas, slot.image, {
      faces: slot.detected?.faces ?? [],
      width: slot.detected?.width,
      height: slot.detected?.height,
      highlight: slot.chosen === null ? [] : [slot.chosen],
      label: `Photo ${slot.n}: ${slot.file?.name ?? "none"}, ${slot.detected?.faces.length ?? 0} face(s) boxed`,
    });
  }

  function showInfo(slot, comparedFace) {
    const faces = slot.detected?.faces ?? [];
    const parts = [element("p", {}, `${faces.length} face${faces.length === 1 ? "" : "s"} found.`)];
    if (comparedFace) {
      const line = element("p", {}, `Compared face ${slot.chosen === null ? "" : `#${slot.chosen + 1} `}`);
      line.append(`(detection score ${fixed(comparedFace.score)}), quality `, qualityElement(comparedFace.quality));
      parts.push(line);
      if (comparedFace.liveness) {
        parts.push(element("p", {}, "Liveness ", livenessElement(comparedFace.liveness)));
      }
    }
    slot.info.replaceChildren(...parts);
  }

  async function choose(slot, file) {
    // The previous verdict goes before anything is awaited: it must never stand beside a new photo.
    run++;
    slot.info.replaceChildren(element("p", { class: "hint" }, "Looking for faces…"));
    result.replaceChildren(element("p", { class: "placeholder" }, "Waiting for both photos…"));
    forgetImage(slot.image);
    Object.assign(slot, { file, image: null, detected: null, chosen: null });
    const image = await loadImage(file);
    if (slot.file !== file) return forgetImage(image);
    slot.image = image;
    redraw(slot);
    try {
      const detected = await request("detect", { method: "POST", body: photoForm(file) });
      if (slot.file !== file) return;
      slot.detected = detected;
      redraw(slot);
      showInfo(slot, null);
    } catch (error) {
      if (slot.file === file) slot.info.replaceChildren(errorElement(error, `Photo ${slot.n}`));
      return;
    }
    if (slots.every((s) => s.detected)) compare();
  }

  async function compare() {
    const mine = ++run;
    again.disabled = true;
    const form = new FormData();
    form.append("face", document.getElementById("verify-face").value);
    if (document.getElementById("verify-liveness").checked) form.append("liveness", "true");
    for (const slot of slots) form.append(`image${slot.n}`, slot.file, slot.file.name || `photo${slot.n}`);
    try {
      const answer = await request("verify", { method: "POST", body: form });
      if (mine !== run) return;
      slots.forEach((slot, i) => {
        slot.chosen = matchingFace(slot.detected.faces, answer.faces[i].box);
        redraw(slot);
        showInfo(slot, answer.faces[i]);
      });
      result.replaceChildren(...verdict(answer));
    } catch (error) {
      if (mine === run) result.replaceChildren(errorElement(error));
    } finally {
      again.disabled = !slots.every((s) => s.detected);
    }
  }

  for (const slot of slots) {
    clearCanvas(slot.canvas, `Photo ${slot.n}: none chosen`, "No photo yet");
    dropZone(
      document.getElementById(`verify-drop-${slot.n}`),
      document.getElementById(`verify-file-${slot.n}`),
      (file) => choose(slot, file),
    );
  }
  again.addEventListener("click", compare);
  for (const id of ["verify-face", "verify-liveness"]) {
    document.getElementById(id).addEventListener("change", () => {
      if (slots.every((s) => s.detected)) compare();
    });
  }
}

function verdict(answer) {
  const decision = element(
    "p",
    { class: `decision ${answer.match ? "match" : "no-match"}`, "data-testid": "decision" },
    answer.match ? "Same person" : "Not the same person",
  );
  const summary = element(
    "p",
    {},
    `Similarity ${answer.similarity.toFixed(3)}; the threshold is ${answer.threshold.toFixed(3)}: ` +
      (answer.match ? "at or above it, so a match." : "below it, so no match."),
  );
  const rows = STAGES.filter((stage) => stage in answer.timings_ms).map((stage) =>
    element("tr", {}, element("th", { scope: "row" }, stage), element("td", { class: "num" }, formatMs(answer.timings_ms[stage]))),
  );
  const timings = element(
    "table",
    { class: "timings" },
    element("caption", {}, "Time per stage, summed over both photos (they run side by side, so the total is less)"),
    element("tbody", {}, ...rows),
  );
  return [decision, similarityScale(answer.similarity, answer.threshold), summary, timings, element("p", { class: "hint" }, `Model ${answer.model}`)];
}
