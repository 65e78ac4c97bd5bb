// Pixel work of the page, without the DOM: YuNet's input and output decoding, face crops as
// ferkeras.faces.crop_face makes them, softmax. Each function follows a Python/OpenCV step of the
// ferkeras pipeline so that the browser scores the same crops; tests/service/test_vision.py runs
// them under Node and compares with OpenCV and ferkeras on the same pictures.

export const CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"];
const STRIDES = [8, 16, 32];

// Python's round(): halves go to the even neighbour. crop_face rounds box centres with it, and
// x + w / 2 of an integer box often is a half.
export function roundHalfEven(value) {
  const floor = Math.floor(value);
  const fraction = value - floor;
  if (fraction !== 0.5) return Math.round(value);
  return floor % 2 === 0 ? floor : floor + 1;
}

// ----------------------------------------------------------------------------- gray levels

// RGBA bytes -> gray as cv2.cvtColor(..., COLOR_RGB2GRAY) computes it for 8-bit images: the
// BT.601 weights in 15-bit fixed point, rounded.
export function grayFromRGBA(rgba, width, height) {
  const gray = new Uint8Array(width * height);
  for (let i = 0, j = 0; i < gray.length; i += 1, j += 4) {
    gray[i] = (rgba[j] * 9798 + rgba[j + 1] * 19235 + rgba[j + 2] * 3735 + 16384) >> 15;
  }
  return gray;
}

// ----------------------------------------------------------------------------- YuNet

// A square RGBA picture (the photo letterboxed into YuNet's fixed 640x640 input, black beyond it)
// -> float32 [1, 3, size, size] planes in B, G, R order, raw 0..255: OpenCV's blobFromImage of a BGR
// image, which is what cv2.FaceDetectorYN feeds the network.
export function yunetInput(rgba, size) {
  const plane = size * size;
  const data = new Float32Array(3 * plane);
  for (let i = 0, j = 0; i < plane; i += 1, j += 4) {
    data[i] = rgba[j + 2];
    data[plane + i] = rgba[j + 1];
    data[2 * plane + i] = rgba[j];
  }
  return data;
}

// YuNet's 12 outputs ({name: Float32Array}) -> faces [{box: [x, y, w, h], score, landmarks}] in the
// coordinates of the network input divided by `scale` (the letterbox factor), best first.
// Per stride s and grid cell (row r, column c): score = sqrt(cls * obj) (both clamped to 0..1),
// centre = (c + dx, r + dy) * s, size = exp(dw, dh) * s, the five landmarks (c + kx, r + ky) * s.
// Then non-maximum suppression, as cv2.FaceDetectorYN does.
export function decodeYunet(outputs, { inputSize = 640, scoreThreshold = 0.9, nmsThreshold = 0.3, topK = 5000 } = {},
                            scale = 1) {
  const candidates = [];
  for (const stride of STRIDES) {
    const cols = Math.floor(inputSize / stride);
    const cls = outputs[`cls_${stride}`], obj = outputs[`obj_${stride}`];
    const bbox = outputs[`bbox_${stride}`], kps = outputs[`kps_${stride}`];
    for (let index = 0; index < cls.length; index += 1) {
      const score = Math.sqrt(clamp01(cls[index]) * clamp01(obj[index]));
      if (!(score >= scoreThreshold)) continue;
      const row = Math.floor(index / cols), col = index % cols;
      const cx = (col + bbox[4 * index]) * stride, cy = (row + bbox[4 * index + 1]) * stride;
      const w = Math.exp(bbox[4 * index + 2]) * stride, h = Math.exp(bbox[4 * index + 3]) * stride;
      const landmarks = [];
      for (let k = 0; k < 5; k += 1) {
        landmarks.push([(col + kps[10 * index + 2 * k]) * stride / scale,
                        (row + kps[10 * index + 2 * k + 1]) * stride / scale]);
      }
      candidates.push({ input: [cx - w / 2, cy - h / 2, w, h], score, landmarks });
    }
  }
  return nms(candidates, nmsThreshold, topK).map(({ input, score, landmarks }) => ({
    box: input.map((v) => v / scale), score, landmarks,
  }));
}

function clamp01(value) {
  return Math.min(1, Math.max(0, value));
}

// Greedy non-maximum suppression by score; like OpenCV's NMSBoxes on the integer boxes that
// FaceDetectorYN gives it, a box is dropped when it overlaps a kept one by IoU above `threshold`.
export function nms(candidates, threshold, topK) {
  const sorted = [...candidates].sort((a, b) => b.score - a.score).slice(0, topK);
  const kept = [];
  for (const candidate of sorted) {
    const box = candidate.input.map(Math.trunc);
    if (kept.every((other) => iou(box, other.int) <= threshold)) kept.push({ ...candidate, int: box });
  }
  return kept;
}

export function iou(a, b) {
  const width = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
  const height = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
  if (width <= 0 || height <= 0) return 0;
  const inter = width * height;
  return inter / (a[2] * a[3] + b[2] * b[3] - inter);
}

// ferkeras.faces.reading_order: rows top to bottom (a box joins the row whose first box spans its
// centre height), each row left to right. `box` of each item is [x, y, w, h].
export function readingOrder(items) {
  const rows = [];
  const byCentre = [...items].sort((a, b) => (a.box[1] + a.box[3] / 2) - (b.box[1] + b.box[3] / 2) || a.box[0] - b.box[0]);
  for (const item of byCentre) {
    const centre = item.box[1] + item.box[3] / 2;
    const first = rows.length ? rows[rows.length - 1][0].box : null;
    if (first && first[1] <= centre && centre <= first[1] + first[3]) rows[rows.length - 1].push(item);
    else rows.push([item]);
  }
  return rows.flatMap((row) => row.sort((a, b) => a.box[0] - b.box[0]));
}

// ----------------------------------------------------------------------------- face crops

// ferkeras.faces.crop_face: the square of side max(w, h) * (1 + 2 * margin) centred on the box,
// edge pixels repeated where it leaves the picture, resized to size x size (area averaging when
// shrinking, bilinear when enlarging, as OpenCV's INTER_AREA and INTER_LINEAR compute them).
export function cropFace(gray, width, height, box, margin, size = 64) {
  const [x, y, w, h] = box;
  const side = Math.max(1, roundHalfEven(Math.max(w, h) * (1 + 2 * margin)));
  const left = roundHalfEven(x + w / 2 - side / 2);
  const top = roundHalfEven(y + h / 2 - side / 2);
  if (left >= width || top >= height || left + side <= 0 || top + side <= 0) {
    throw new Error(`box ${box} lies outside the ${width}x${height} image`);
  }
  const square = new Uint8Array(side * side);
  for (let row = 0; row < side; row += 1) {
    const sourceRow = Math.min(height - 1, Math.max(0, top + row)) * width;
    for (let col = 0; col < side; col += 1) {
      square[row * side + col] = gray[sourceRow + Math.min(width - 1, Math.max(0, left + col))];
    }
  }
  return side > size ? resizeArea(square, side, size) : resizeBilinear(square, side, size);
}

// Shrink a square uint8 picture by area averaging, as OpenCV's INTER_AREA does: each output pixel
// is the mean of the input area it covers. A whole-number factor averages whole blocks with
// integer rounding (halves up); otherwise every input pixel is weighted by the part of it inside
// the output pixel's cell (slivers under 1/1000 of a pixel ignored, as OpenCV does) and the sum is
// rounded to the nearest level.
export function resizeArea(source, side, size) {
  const out = new Uint8Array(size * size);
  const factor = side / size;
  if (Number.isInteger(factor)) {
    const area = factor * factor;
    for (let row = 0; row < size; row += 1) {
      for (let col = 0; col < size; col += 1) {
        let sum = 0;
        for (let dy = 0; dy < factor; dy += 1) {
          const base = (row * factor + dy) * side + col * factor;
          for (let dx = 0; dx < factor; dx += 1) sum += source[base + dx];
        }
        out[row * size + col] = Math.floor((sum + Math.floor(area / 2)) / area);
      }
    }
    return out;
  }
  const weights = areaWeights(side, size);
  for (let row = 0; row < size; row += 1) {
    for (let col = 0; col < size; col += 1) {
      let sum = 0;
      for (const [sy, wy] of weights[row]) {
        for (const [sx, wx] of weights[col]) sum += source[sy * side + sx] * wy * wx;
      }
      out[row * size + col] = Math.min(255, Math.max(0, roundHalfEven(sum)));
    }
  }
  return out;
}

// For each output index, [[input index, weight], ...] of the input pixels its cell covers.
function areaWeights(side, size) {
  const factor = side / size;
  const table = [];
  for (let index = 0; index < size; index += 1) {
    const start = index * factor, end = start + factor;
    const cell = Math.min(factor, side - start);
    const last = Math.min(Math.floor(end), side - 1), first = Math.min(Math.ceil(start), last);
    const entries = [];
    if (first - start > 1e-3) entries.push([first - 1, (first - start) / cell]);
    for (let sx = first; sx < last; sx += 1) entries.push([sx, 1 / cell]);
    if (end - last > 1e-3) entries.push([last, Math.min(Math.min(end - last, 1), cell) / cell]);
    table.push(entries);
  }
  return table;
}

// Enlarge a square uint8 picture bilinearly, with the fixed-point arithmetic of OpenCV's 8-bit
// INTER_LINEAR so that the levels come out the same: pixel centres aligned ((i + 0.5) * factor
// - 0.5), 11-bit weights; across columns the position is clamped to the picture, across rows only
// the row indices are (the weights stay); the column sums, shifted right by 4, are weighted and
// shifted right by 16 per row, and the sum of the two rounded off by its last 2 bits.
export function resizeBilinear(source, side, size) {
  const out = new Uint8Array(size * size);
  const columns = linearTaps(side, size, true), rows = linearTaps(side, size, false);
  const sums = (sy) => columns.map(([x0, x1, w0, w1]) => source[sy * side + x0] * w0 + source[sy * side + x1] * w1);
  for (let row = 0; row < size; row += 1) {
    const [y0, y1, w0, w1] = rows[row];
    const upper = sums(y0), lower = sums(y1);
    for (let col = 0; col < size; col += 1) {
      out[row * size + col] = (((upper[col] >> 4) * w0 >> 16) + ((lower[col] >> 4) * w1 >> 16) + 2) >> 2;
    }
  }
  return out;
}

// [[first input index, second, weight of first, weight of second]] per output index, weights
// summing to 2048; `clampPosition` moves a position outside the picture onto its edge pixel.
function linearTaps(side, size, clampPosition) {
  const factor = side / size, one = 2048;
  const taps = [];
  for (let index = 0; index < size; index += 1) {
    const position = (index + 0.5) * factor - 0.5;
    let first = Math.floor(position), fraction = position - first;
    if (clampPosition && first < 0) [first, fraction] = [0, 0];
    if (clampPosition && first >= side - 1) [first, fraction] = [side - 1, 0];
    const weight = Math.round((1 - fraction) * one);
    const inside = (i) => Math.min(side - 1, Math.max(0, i));
    taps.push([inside(first), inside(first + 1), weight, one - weight]);
  }
  return taps;
}

// ----------------------------------------------------------------------------- scores

// Scores (N x 8, flat) -> probabilities, row by row, shifted by the row maximum for stability.
export function softmax(scores, classes = CLASSES.length) {
  const out = new Float64Array(scores.length);
  for (let start = 0; start < scores.length; start += classes) {
    let max = -Infinity, total = 0;
    for (let k = 0; k < classes; k += 1) max = Math.max(max, scores[start + k]);
    for (let k = 0; k < classes; k += 1) total += (out[start + k] = Math.exp(scores[start + k] - max));
    for (let k = 0; k < classes; k += 1) out[start + k] /= total;
  }
  return out;
}
