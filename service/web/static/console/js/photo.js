// Photos on the page: drop zones and file pickers, and a canvas that draws a photo with each
// face's box, its five landmarks and a number, the chosen faces highlighted.

const COLORS = { face: "#ffd23f", highlight: "#2fd07a", landmark: "#ff4f79", shadow: "rgba(0,0,0,.75)" };

// Call `onFile(file)` when a file is dropped on `zone` or chosen with `input`.
export function dropZone(zone, input, onFile) {
  input.addEventListener("change", () => {
    if (input.files.length) onFile(input.files[0]);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer?.files?.[0];
    if (file) onFile(file);
  });
}

// An <img> of the file, or null when the browser cannot show it (the service says why).
export function loadImage(file) {
  return new Promise((resolve) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => {
      URL.revokeObjectURL(url);
      resolve(null);
    };
    image.src = url;
  });
}

export function forgetImage(image) {
  if (image?.src?.startsWith("blob:")) URL.revokeObjectURL(image.src);
}

export function iou(a, b) {
  const w = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const h = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = w * h;
  const union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
  return union > 0 ? inter / union : 0;
}

// Index of the face in `faces` whose box overlaps `box` most, or -1.
export function matchingFace(faces, box) {
  let best = -1;
  let bestOverlap = 0.3;
  faces.forEach((face, index) => {
    const overlap = iou(face.box, box);
    if (overlap > bestOverlap) [best, bestOverlap] = [index, overlap];
  });
  return best;
}

// An empty photo frame with a word in the middle ("No photo yet").
export function clearCanvas(canvas, label, text = "") {
  const context = canvas.getContext("2d");
  context.fillStyle = "#20262e";
  context.fillRect(0, 0, canvas.width, canvas.height);
  if (text) {
    context.fillStyle = "#9aa5b4";
    context.font = "28px system-ui, sans-serif";
    context.textAlign = "center";
    context.fillText(text, canvas.width / 2, canvas.height / 2);
    context.textAlign = "start";
  }
  canvas.setAttribute("aria-label", label);
}

// Draw `image` fitted into the canvas and every face over it. Face coordinates are pixels of
// the photo as the service decoded it (`width` x `height`, EXIF orientation applied).
export function drawFaces(canvas, image, { faces = [], width, height, highlight = [], label = "" }) {
  const context = canvas.getContext("2d");
  clearCanvas(canvas, label, image ? "" : "This file cannot be shown as a picture");
  if (!image) return;
  const w = width || image.naturalWidth;
  const h = height || image.naturalHeight;
  const scale = Math.min(canvas.width / w, canvas.height / h);
  const left = (canvas.width - w * scale) / 2;
  const top = (canvas.height - h * scale) / 2;
  context.drawImage(image, left, top, w * scale, h * scale);
  const at = ([x, y]) => [left + x * scale, top + y * scale];
  faces.forEach((face, index) => {
    const chosen = highlight.includes(index);
    const [x1, y1] = at([face.box[0], face.box[1]]);
    const [x2, y2] = at([face.box[2], face.box[3]]);
    context.lineWidth = chosen ? 8 : 5;
    context.strokeStyle = COLORS.shadow;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    context.lineWidth = chosen ? 5 : 3;
    context.strokeStyle = chosen ? COLORS.highlight : COLORS.face;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    for (const point of face.landmarks || []) {
      const [px, py] = at(point);
      context.beginPath();
      context.arc(px, py, chosen ? 5 : 4, 0, 2 * Math.PI);
      context.fillStyle = COLORS.landmark;
      context.fill();
      context.lineWidth = 1;
      context.strokeStyle = COLORS.shadow;
      context.stroke();
    }
    const tag = String(index + 1);
    context.font = "bold 24px system-ui, sans-serif";
    const tagWidth = context.measureText(tag).width + 14;
    context.fillStyle = chosen ? COLORS.highlight : COLORS.face;
    context.fillRect(x1 - 2, Math.max(0, y1 - 30), tagWidth, 30);
    context.fillStyle = "#000";
    context.fillText(tag, x1 + 5, Math.max(24, y1 - 7));
  });
}
