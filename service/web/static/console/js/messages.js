// The API's stable error codes in words a person understands; the API's own message follows
// as the detail (it often says exactly what to change).

const WORDS = {
  invalid_image: "This file is not a photo the service can read: it is not an image, or it is damaged.",
  unsupported_format: "This image format is not supported. Use a JPEG, PNG, WebP or BMP photo.",
  payload_too_large: "The file is too large to upload.",
  image_too_large: "The photo has too many pixels. Make it smaller and try again.",
  no_face: "No face was found in the photo.",
  face_too_small: "The faces in this photo are too small. Use a closer or larger photo.",
  low_quality: "The face is not clear enough to enrol. Use a sharper, well-lit, frontal photo.",
  multiple_faces: "The photo shows more than one face; enrolment needs a photo of one person.",
  missing_field: "Something the service needs was not sent.",
  validation_error: "The service could not accept this request.",
  not_found: "Not found: it may have been deleted in the meantime.",
  method_not_allowed: "The service does not allow this action here.",
  unauthorized: "An API key is needed, or the key given was not accepted.",
  forbidden: "Your API key is not allowed to do this.",
  rate_limited: "Too many requests right now. Wait a moment and try again.",
  identity_has_no_faces: "This person has no enrolled photo yet: add one first.",
  model_mismatch: "The gallery was enrolled with another model; re-enrol these people with the loaded model.",
  liveness_failed: "A face looks like a photo of a photo or of a screen, not a live person: take a new photo of the person themselves.",
  liveness_unavailable: "This service has no liveness models loaded, so it cannot check liveness.",
  not_ready: "The service is still starting (loading its models). Try again in a moment.",
  internal_error: "Something went wrong inside the service; its log has the details.",
  network: "The service cannot be reached. Is it running, and is this page served by it?",
};

export function describeError(error) {
  let words = WORDS[error.code];
  if (!words) words = error.status ? `The service answered with an error (${error.status}).` : String(error.message);
  if (error.code === "rate_limited" && error.retryAfter) {
    words = `Too many requests right now. Try again in ${error.retryAfter} seconds.`;
  }
  const detail = error.code in WORDS && error.code !== "network" ? error.message : "";
  return { words, detail, code: error.code };
}

// A <div class="error"> with the words, the code and the service's detail.
export function errorElement(error, prefix = "") {
  const { words, detail, code } = describeError(error);
  const box = document.createElement("div");
  box.className = "error";
  box.dataset.code = code;
  const main = document.createElement("p");
  main.textContent = prefix ? `${prefix}: ${words}` : words;
  box.append(main);
  if (detail) {
    const small = document.createElement("p");
    small.className = "hint";
    small.textContent = `The service said: ${detail} (${code})`;
    box.append(small);
  }
  return box;
}
