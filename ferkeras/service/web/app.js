// The page: a photo (file, drop) or the webcam -> faces found by YuNet -> FER+ expressions, both
// models run here with onnxruntime-web; nothing is sent anywhere. The pixel work is in vision.mjs.
// The results are drawn over the picture and listed in #results, one <li> per face with its box,
// label and probabilities in data- attributes; <body data-state> says loading, ready, busy, done
// or error (tests/service/test_page.py waits on it).
import { CLASSES, cropFace, decodeYunet, grayFromRGBA, readingOrder, roundHalfEven, softmax, yunetInput }
  from "./vision.mjs";

const FACE_SIDE = 64; // the contract's input: [N, 1, 64, 64] raw gray 0..255
const DEFAULTS = {
  margin: 0,
  yunet: { inputSize: 640, scoreThreshold: 0.9, nmsThreshold: 0.3, topK: 5000 },
  colours: ["#c8c8c8", "#ffd700", "#ff8c00", "#0078ff", "#e60000", "#00a000", "#c800c8", "#00a0a0"],
  models: { expression: "models/expression.onnx", detector: "models/detector.onnx" },
};
const $ = (id) => document.getElementById(id);
const page = { ort: null, detector: null, expression: null, config: DEFAULTS, webcam: null };

function setStatus(state, message) {
  document.body.dataset.state = state;
  $("status").textContent = message;
}

// ----------------------------------------------------------------------------- loading

async function loadConfig() {
  try {
    const response = await fetch("config.json");
    return response.ok ? { ...DEFAULTS, ...(await response.json()) } : DEFAULTS;
  } catch {
    return DEFAULTS; // a static copy of the page without config.json still works
  }
}

// The model bytes are fetched here rather than by onnxruntime so that a missing file shows the
// server's one-line reason instead of a bare network error.
async function loadSession(url, what) {
  const response = await fetch(url);
  if (!response.ok) {
    const reason = await response.json().then((body) => body.error, () => null);
    throw new Error(`The ${what} could not be loaded: ${reason || `${url}: HTTP ${response.status}`}`);
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  return page.ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
}

async function start() {
  setStatus("loading", "Loading the models…");
  page.config = await loadConfig();
  try {
    page.ort = await import("./vendor/ort.wasm.min.mjs");
  } catch {
    throw new Error("onnxruntime-web could not be loaded from vendor/: run `npm ci` in the repository, "
                    + "then restart the server");
  }
  page.ort.env.wasm.wasmPaths = new URL("vendor/", document.baseURI).href;
  page.detector = await loadSession(page.config.models.detector, "face detector");
  page.expression = await loadSession(page.config.models.expression, "expression model");
  for (const control of document.querySelectorAll("[data-needs-models]")) control.disabled = false;
  setStatus("ready", "Choose a photo, drop one here, or start the webcam.");
}

// ----------------------------------------------------------------------------- the pipeline

function canvasWith(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return [canvas, canvas.getContext("2d", { willReadFrequently: true })];
}

// Faces of one picture (an ImageBitmap or the video): {picture: the frame analysed, as a canvas,
// faces: [{box, label, confidence, probabilities}]}.
async function analyse(source, width, height) {
  // The picture at full size, transparency on white as ferkeras.faces.to_bgr composes it.
  const [full, fullContext] = canvasWith(width, height);
  fullContext.fillStyle = "#fff";
  fullContext.fillRect(0, 0, width, height);
  fullContext.drawImage(source, 0, 0, width, height);
  const rgba = fullContext.getImageData(0, 0, width, height).data;

  // YuNet takes a fixed 640x640 input: the picture scaled to fit, black below or to the right.
  const { inputSize } = page.config.yunet;
  const scale = Math.min(inputSize / width, inputSize / height);
  const [, boxContext] = canvasWith(inputSize, inputSize);
  boxContext.fillStyle = "#000";
  boxContext.fillRect(0, 0, inputSize, inputSize);
  boxContext.drawImage(full, 0, 0, width * scale, height * scale);
  const input = yunetInput(boxContext.getImageData(0, 0, inputSize, inputSize).data, inputSize);
  const feeds = { [page.detector.inputNames[0]]: new page.ort.Tensor("float32", input, [1, 3, inputSize, inputSize]) };
  const outputs = await page.detector.run(feeds);
  const named = Object.fromEntries(Object.entries(outputs).map(([name, tensor]) => [name, tensor.data]));
  const found = decodeYunet(named, page.config.yunet, scale)
    .map((face) => ({ box: face.box.map(roundHalfEven), score: face.score }));
  const faces = readingOrder(found);
  if (!faces.length) return { picture: full, faces };

  const gray = grayFromRGBA(rgba, width, height);
  const crops = faces.map((face) => cropFace(gray, width, height, face.box, page.config.margin, FACE_SIDE));
  const probabilities = await expressions(crops);
  return { picture: full, faces: faces.map((face, index) => {
    const probs = Array.from(probabilities.slice(index * CLASSES.length, (index + 1) * CLASSES.length));
    const top = probs.indexOf(Math.max(...probs));
    return { ...face, label: CLASSES[top], classIndex: top, confidence: probs[top], probabilities: probs };
  }) };
}

// Softmax probabilities (flat N x 8) of 64x64 gray crops with the contract model.
async function expressions(crops) {
  const run = async (batch) => {
    const data = new Float32Array(batch.length * FACE_SIDE * FACE_SIDE);
    batch.forEach((crop, index) => data.set(crop, index * FACE_SIDE * FACE_SIDE));
    const tensor = new page.ort.Tensor("float32", data, [batch.length, 1, FACE_SIDE, FACE_SIDE]);
    const output = await page.expression.run({ [page.expression.inputNames[0]]: tensor });
    return output[page.expression.outputNames[0]].data;
  };
  let scores;
  try {
    scores = await run(crops);
  } catch (error) {
    if (crops.length === 1) throw error;
    // A model with a fixed batch of one (the ONNX Model Zoo's) takes the faces one at a time.
    const parts = [];
    for (const crop of crops) parts.push(...(await run([crop])));
    scores = parts;
  }
  return softmax(scores, CLASSES.length);
}

// ----------------------------------------------------------------------------- showing results

function draw(picture, faces) {
  const { width, height } = picture;
  const canvas = $("picture");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.drawImage(picture, 0, 0);
  const line = Math.max(2, Math.round(Math.min(width, height) / 240));
  context.font = `${Math.max(14, Math.round(Math.min(width, height) / 28))}px system-ui, sans-serif`;
  context.textBaseline = "top";
  faces.forEach((face, index) => {
    const [x, y, w, h] = face.box;
    const colour = page.config.colours[face.classIndex];
    const text = `${index + 1} ${face.label} ${Math.round(face.confidence * 100)}%`;
    const textHeight = parseInt(context.font, 10) + 2 * line;
    const labelTop = y - textHeight >= 0 ? y - textHeight : y;
    context.lineWidth = line;
    context.strokeStyle = colour;
    context.strokeRect(x, y, w, h);
    context.fillStyle = colour;
    context.fillRect(x - line / 2, labelTop, context.measureText(text).width + 2 * line, textHeight);
    context.fillStyle = "#000";
    context.fillText(text, x + line, labelTop + line);
  });
}

function list(faces) {
  const results = $("results");
  results.replaceChildren(...faces.map((face, index) => {
    const item = document.createElement("li");
    item.dataset.box = face.box.join(",");
    item.dataset.label = face.label;
    item.dataset.confidence = face.confidence.toFixed(6);
    item.dataset.probabilities = JSON.stringify(face.probabilities);
    item.style.setProperty("--colour", page.config.colours[face.classIndex]);
    const title = document.createElement("p");
    title.className = "face-title";
    title.textContent = `Face ${index + 1}: ${face.label} ${Math.round(face.confidence * 100)}%`;
    const bars = document.createElement("div");
    bars.className = "bars";
    CLASSES.forEach((name, k) => {
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.setProperty("--p", face.probabilities[k].toFixed(4));
      bar.style.setProperty("--colour", page.config.colours[k]);
      bar.title = `${name} ${(face.probabilities[k] * 100).toFixed(1)}%`;
      bar.textContent = name;
      bars.append(bar);
    });
    item.append(title, bars);
    return item;
  }));
}

function describe(faces) {
  if (!faces.length) return "No face found: try a photo with faces seen from the front.";
  return faces.length === 1 ? "1 face." : `${faces.length} faces, numbered in reading order.`;
}

// ----------------------------------------------------------------------------- photos and webcam

async function showPhoto(file) {
  stopWebcam();
  setStatus("busy", `Reading ${file.name}…`); // at once, before the first await
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    $("results").replaceChildren();
    setStatus("error", `${file.name}: not a readable image (the browser cannot decode it); choose a JPEG, PNG or WebP photo.`);
    return;
  }
  setStatus("busy", `Looking for faces in ${file.name}…`);
  const started = performance.now();
  const { picture, faces } = await analyse(bitmap, bitmap.width, bitmap.height);
  $("timing").textContent = `${bitmap.width}x${bitmap.height}, analysed in ${Math.round(performance.now() - started)} ms`;
  draw(picture, faces);
  list(faces);
  setStatus("done", `${file.name}: ${describe(faces)}`);
}

async function startWebcam() {
  if (!navigator.mediaDevices?.getUserMedia) {
    setStatus("error", "This browser gives the page no camera (it needs https or localhost).");
    return;
  }
  const video = $("video");
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (error) {
    setStatus("error", `No webcam: ${error.message || error.name}.`);
    return;
  }
  await video.play();
  page.webcam = { frames: 0, since: performance.now() };
  $("webcam").textContent = "Stop the webcam";
  while (page.webcam) {
    const { picture, faces } = await analyse(video, video.videoWidth, video.videoHeight);
    if (!page.webcam) break;
    draw(picture, faces);
    list(faces);
    page.webcam.frames += 1;
    const rate = page.webcam.frames / ((performance.now() - page.webcam.since) / 1000);
    setStatus("done", `Webcam: ${describe(faces)} (${rate.toFixed(1)} frames/s, frame ${page.webcam.frames})`);
    await new Promise(requestAnimationFrame);
  }
}

function stopWebcam() {
  if (!page.webcam) return;
  page.webcam = null;
  const video = $("video");
  video.srcObject?.getTracks().forEach((track) => track.stop());
  video.srcObject = null;
  $("webcam").textContent = "Use the webcam";
}

function guard(task) {
  return (...args) => task(...args).catch((error) => setStatus("error", error.message || String(error)));
}

$("file").addEventListener("change", guard(async (event) => {
  const [file] = event.target.files;
  event.target.value = ""; // so that picking the same file again is a change too
  if (file) await showPhoto(file);
}));
$("webcam").addEventListener("click", guard(async () => (page.webcam ? stopWebcam() : startWebcam())));
$("stage").addEventListener("dragover", (event) => event.preventDefault());
$("stage").addEventListener("drop", guard(async (event) => {
  event.preventDefault();
  if (page.detector && event.dataTransfer.files.length) await showPhoto(event.dataTransfer.files[0]);
}));
guard(start)();
