// The model's preprocessing in the browser, step for step as pocketcnn's Python runtime
// (src/pocketcnn/runtime/images.py, which is torchvision's on a PIL image):
//
//   decode (EXIF orientation applied, no colour management, alpha not premultiplied)
//   -> L (ITU-R 601-2 luma, PIL's integer arithmetic) or RGB (alpha dropped)
//   -> resize: shorter side to `resize`, the longer one truncated, PIL's BILINEAR filter
//      with antialiasing (Pillow's libImaging/Resample.c: a triangle filter whose support
//      grows with the downscale factor, coefficients normalised to sum 1 and turned into
//      22-bit integers, each pass rounded to 8 bits; horizontal pass first)
//   -> center crop (offsets rounded half to even, as Python's round)
//   -> float32 x * (1 / (255 * std)) - mean / std, CHW.
//
// Everything except decodeImage works on plain typed arrays, so node can run it too.

const PRECISION_BITS = 22; // Resample.c: 32 - 8 - 2
const HALF = 1 << (PRECISION_BITS - 1);
const ONE = 1 << PRECISION_BITS;

/** Python's round() of a float: halves go to the even neighbour. */
export function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** [width, height] after torchvision's Resize(size): shorter side `size`, the other truncated. */
export function resizedSize(width, height, size) {
  const short = Math.min(width, height);
  const long = Math.max(width, height);
  const newLong = Math.trunc((size * long) / short);
  return width <= height ? [size, newLong] : [newLong, size];
}

/** [left, top] of torchvision's CenterCrop(size). */
export function centerCropOffset(width, height, size) {
  return [roundHalfEven((width - size) / 2.0), roundHalfEven((height - size) / 2.0)];
}

/** RGBA bytes -> interleaved 1 (PIL "L") or 3 (RGB) channel bytes. */
export function toChannels(rgba, width, height, channels) {
  const n = width * height;
  if (channels === 3) {
    const out = new Uint8Array(n * 3);
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      out[3 * i] = rgba[j];
      out[3 * i + 1] = rgba[j + 1];
      out[3 * i + 2] = rgba[j + 2];
    }
    return out;
  }
  if (channels === 1) {
    const out = new Uint8Array(n);
    for (let i = 0, j = 0; i < n; i++, j += 4) {
      // Convert.c: L24(rgb) = r*19595 + g*38470 + b*7471 + 0x8000, then >> 16
      out[i] = (rgba[j] * 19595 + rgba[j + 1] * 38470 + rgba[j + 2] * 7471 + 0x8000) >>> 16;
    }
    return out;
  }
  throw new Error(`images give 1 or 3 channels, the model expects ${channels}`);
}

/** Resample.c precompute_coeffs + normalize_coeffs_8bpc for the bilinear filter, box (0, inSize). */
export function bilinearCoeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      let t = (x + xmin - center + 0.5) * ss;
      if (t < 0.0) t = -t;
      const v = t < 1.0 ? 1.0 - t : 0.0;
      w[x] = v;
      ww += v;
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * ONE) : Math.trunc(0.5 + k * ONE);
    }
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss) {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * One horizontal pass: rows `first .. first + rows` of `src` (pixels of `stride` bytes, the
 * first `c` of them used) -> `outW` pixels of `c` bytes per row.
 */
function horizontalPass(src, width, stride, rows, c, outW, first) {
  const { ksize, bounds, kk } = bilinearCoeffs(width, outW);
  const out = new Uint8Array(outW * rows * c);
  for (let y = 0; y < rows; y++) {
    const rowIn = (y + first) * width * stride;
    let o = y * outW * c;
    for (let xx = 0; xx < outW; xx++) {
      const xmax = bounds[2 * xx + 1];
      const k0 = xx * ksize;
      let p = rowIn + bounds[2 * xx] * stride;
      if (c === 1) {
        let s0 = HALF;
        for (let x = 0; x < xmax; x++, p += stride) s0 += src[p] * kk[k0 + x];
        out[o++] = clip8(s0);
      } else {
        let s0 = HALF;
        let s1 = HALF;
        let s2 = HALF;
        for (let x = 0; x < xmax; x++, p += stride) {
          const k = kk[k0 + x];
          s0 += src[p] * k;
          s1 += src[p + 1] * k;
          s2 += src[p + 2] * k;
        }
        out[o++] = clip8(s0);
        out[o++] = clip8(s1);
        out[o++] = clip8(s2);
      }
    }
  }
  return out;
}

/** One vertical pass: `src` (pixels of `stride` bytes, the first `c` used) -> `outH` rows of `c` bytes per pixel. */
function verticalPass(src, width, stride, c, outH, vert, shift) {
  const { ksize, bounds, kk } = vert;
  const rowIn = width * stride;
  const out = new Uint8Array(width * c * outH);
  let o = 0;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[2 * yy] - shift;
    const ymax = bounds[2 * yy + 1];
    const k0 = yy * ksize;
    for (let x = 0; x < width; x++) {
      for (let ch = 0; ch < c; ch++) {
        let ss = HALF;
        let p = ymin * rowIn + x * stride + ch;
        for (let y = 0; y < ymax; y++, p += rowIn) ss += src[p] * kk[k0 + y];
        out[o++] = clip8(ss);
      }
    }
  }
  return out;
}

/**
 * PIL's Image.resize((outW, outH), BILINEAR) of interleaved 8-bit pixels with `c` channels.
 * Pass order as Pillow 13 (ImagingResampleInner, python-pillow/Pillow#9549): the vertical
 * pass runs first when the height shrinks by more than twice as many pixels as the width
 * (found to hold exactly on 2,600 boundary cases against Pillow 13.0.0), else the
 * horizontal one, over only the rows the vertical pass reads. The order matters: each pass
 * rounds to 8 bits (Pillow before 13 always went horizontal first; where the two orders
 * differ, a few pixels differ by one level). `stride`: bytes per source pixel, of which the first `c` are used (4 reads
 * RGB straight out of RGBA).
 */
export function resizeBilinear(src, width, height, c, outW, outH, stride = c) {
  const needH = outW !== width;
  const needV = outH !== height;
  if (!needH && !needV) {
    const out = new Uint8Array(width * height * c);
    for (let i = 0, j = 0; i < out.length; j += stride) for (let ch = 0; ch < c; ch++) out[i++] = src[j + ch];
    return out;
  }
  const vert = needV ? bilinearCoeffs(height, outH) : null;
  const verticalFirst = outH < height && 2 * (width - outW) < height - outH;
  if (verticalFirst) {
    const tmp = verticalPass(src, width, stride, c, outH, vert, 0);
    return needH ? horizontalPass(tmp, width, c, outH, c, outW, 0) : tmp;
  }
  if (!needV) return horizontalPass(src, width, stride, height, c, outW, 0);
  if (!needH) return verticalPass(src, width, stride, c, outH, vert, 0);
  const first = vert.bounds[0]; // ybox_first .. ybox_last: the rows the vertical pass reads
  const last = vert.bounds[2 * outH - 2] + vert.bounds[2 * outH - 1];
  const tmp = horizontalPass(src, width, stride, last - first, c, outW, first);
  return verticalPass(tmp, outW, c, c, outH, vert, first);
}

/** Interleaved uint8 (h, w, c) -> float32 CHW, x * (1 / (255 * std)) - mean / std in float32. */
export function normalize(pixels, width, height, c, mean, std) {
  const n = width * height;
  const out = new Float32Array(c * n);
  const f = Math.fround;
  for (let ch = 0; ch < c; ch++) {
    const m = f(mean[mean.length === 1 ? 0 : ch]);
    const s = f(std[std.length === 1 ? 0 : ch]);
    const scale = f(1 / f(255 * s));
    const shift = f(m / s);
    const base = ch * n;
    for (let i = 0; i < n; i++) out[base + i] = f(pixels[i * c + ch] * scale) - shift;
  }
  return out;
}

/**
 * Decoded RGBA pixels -> the model input, as pocketcnn.runtime.images.preprocess.
 * spec: {channels, crop, resize, mean, std}. Returns {data: Float32Array, dims: [1, C, S, S]}.
 */
export function preprocessPixels(rgba, width, height, spec) {
  const c = spec.channels;
  const size = spec.crop;
  const resize = spec.resize || size;
  const [w, h] = resizedSize(width, height, resize);
  let px;
  if (w === width && h === height) px = toChannels(rgba, width, height, c);
  else if (c === 3) px = resizeBilinear(rgba, width, height, 3, w, h, 4); // RGB read straight from RGBA
  else px = resizeBilinear(toChannels(rgba, width, height, c), width, height, c, w, h);
  if (size > Math.min(w, h)) throw new Error(`resized to ${w}x${h}, smaller than the crop ${size}`);
  if (w !== size || h !== size) {
    const [left, top] = centerCropOffset(w, h, size);
    const crop = new Uint8Array(size * size * c);
    for (let y = 0; y < size; y++) {
      const from = ((y + top) * w + left) * c;
      crop.set(px.subarray(from, from + size * c), y * size * c);
    }
    px = crop;
  }
  return { data: normalize(px, size, size, c, spec.mean, spec.std), dims: [1, c, size, size] };
}

let glReader = null; // one WebGL2 context for every image: creating one costs milliseconds

function webglReader() {
  if (glReader && !glReader.gl.isContextLost()) return glReader;
  glReader = null;
  if (typeof OffscreenCanvas === "undefined") return null;
  const canvas = new OffscreenCanvas(1, 1);
  const gl = canvas.getContext("webgl2", { premultipliedAlpha: false, antialias: false, depth: false, stencil: false });
  if (!gl) return null;
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, tex);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
  gl.pixelStorei(gl.UNPACK_COLORSPACE_CONVERSION_WEBGL, gl.NONE);
  gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
  gl.pixelStorei(gl.PACK_ALIGNMENT, 1);
  const fb = gl.createFramebuffer();
  gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
  glReader = { gl, tex, max: gl.getParameter(gl.MAX_TEXTURE_SIZE) };
  return glReader;
}

function readWithWebGL(bitmap) {
  // A WebGL texture keeps the bitmap's bytes as they are: unpremultiplied RGBA, exact even
  // where alpha is low (a 2D canvas stores premultiplied colour and loses those bits).
  const reader = webglReader();
  if (!reader || bitmap.width > reader.max || bitmap.height > reader.max) return null;
  const { gl, tex } = reader;
  gl.bindTexture(gl.TEXTURE_2D, tex);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, gl.RGBA, gl.UNSIGNED_BYTE, bitmap);
  gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, tex, 0);
  if (gl.checkFramebufferStatus(gl.FRAMEBUFFER) !== gl.FRAMEBUFFER_COMPLETE) return null;
  const out = new Uint8Array(bitmap.width * bitmap.height * 4);
  gl.readPixels(0, 0, bitmap.width, bitmap.height, gl.RGBA, gl.UNSIGNED_BYTE, out);
  const ok = gl.getError() === gl.NO_ERROR;
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, 1, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, null); // free the photo's texture
  return ok ? out : null;
}

function readWith2D(bitmap) {
  const canvas = typeof OffscreenCanvas !== "undefined"
    ? new OffscreenCanvas(bitmap.width, bitmap.height)
    : Object.assign(document.createElement("canvas"), { width: bitmap.width, height: bitmap.height });
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return new Uint8Array(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data.buffer);
}

/** Pixels the browser can never show anything for: refused before decoding, as the Python side. */
export const MAX_IMAGE_PIXELS = 64000000;

/**
 * A Blob (File) -> {rgba: Uint8Array, width, height}: the file's own pixels, with the EXIF
 * orientation applied (as PIL's ImageOps.exif_transpose), no colour-profile conversion and
 * unpremultiplied alpha. Throws an Error whose message says why the file is not usable.
 */
export async function decodeImage(blob) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image",
      premultiplyAlpha: "none",
      colorSpaceConversion: "none",
    });
  } catch (err) {
    throw new Error(blob.size === 0 ? "empty, not an image" : "not an image file the browser can decode");
  }
  try {
    const pixels = bitmap.width * bitmap.height;
    if (pixels > MAX_IMAGE_PIXELS) {
      throw new Error(`image of ${bitmap.width}x${bitmap.height} = ${pixels} pixels is over the limit of ${MAX_IMAGE_PIXELS}`);
    }
    const rgba = readWithWebGL(bitmap) || readWith2D(bitmap);
    return { rgba, width: bitmap.width, height: bitmap.height };
  } finally {
    bitmap.close();
  }
}

/** A Blob -> the model input ({data, dims}), as the Python runtime's preprocess. */
export async function preprocessBlob(blob, spec) {
  const img = await decodeImage(blob);
  return preprocessPixels(img.rgba, img.width, img.height, spec);
}
