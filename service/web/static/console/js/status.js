// Status page: GET /status in words.

import { request } from "./api.js";
import { errorElement } from "./messages.js";
import { element } from "./ui.js";

function megabytes(bytes) {
  return `${(bytes / 1_000_000).toFixed(bytes < 10_000_000 ? 1 : 0)} MB`;
}

export async function loadStatus() {
  const list = document.getElementById("status-list");
  try {
    const s = await request("status");
    const rows = [
      ["Model pack", `${s.pack} (${s.model})`],
      ["Detector", s.detector],
      ["Recognizer", s.recognizer],
      ["Embedding size", String(s.embedding_size)],
      ["Runs on", s.provider],
      ["Threshold", `${s.threshold.toFixed(3)} (the pack recommends ${s.pack_threshold.toFixed(3)})`],
      ["Search index", `${s.index.type} on ${s.index.device}, ${s.index.size} face(s)`],
      ["Gallery", `${s.gallery.identities} people, ${s.gallery.faces} faces`],
      ["Largest upload", megabytes(s.max_upload_bytes)],
      ["API keys", s.api_keys ? "required" : "off"],
      ["Version", s.version],
    ];
    list.replaceChildren(...rows.flatMap(([name, value]) => [element("dt", {}, name), element("dd", {}, value)]));
    return s;
  } catch (error) {
    list.replaceChildren(element("dt", {}, "Status"), element("dd", {}, errorElement(error)));
    return null;
  }
}
