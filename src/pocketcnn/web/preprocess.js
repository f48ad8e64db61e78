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
//   -> float32 x * (1 / (255 * std)) - mean / std, CHW (ONNX) or HWC (LiteRT's NHWC .tflite).
//
// Size limits are checked on the file's header before anything is decoded (as
// images.load_image refuses a decompression bomb from PIL's header): imageHeader reads
// the width and height of PNG, JPEG, GIF, WebP and BMP files; other files are refused.
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

/**
 * Interleaved uint8 (h, w, c) -> float32 x * (1 / (255 * std)) - mean / std in float32, laid
 * out CHW (layout "NCHW", the ONNX file's input) or HWC ("NHWC", the .tflite file's input).
 */
export function normalize(pixels, width, height, c, mean, std, layout = "NCHW") {
  const n = width * height;
  const out = new Float32Array(c * n);
  const f = Math.fround;
  const hwc = layout === "NHWC";
  for (let ch = 0; ch < c; ch++) {
    const m = f(mean[mean.length === 1 ? 0 : ch]);
    const s = f(std[std.length === 1 ? 0 : ch]);
    const scale = f(1 / f(255 * s));
    const shift = f(m / s);
    if (hwc) {
      for (let i = 0; i < n; i++) out[i * c + ch] = f(pixels[i * c + ch] * scale) - shift;
    } else {
      const base = ch * n;
      for (let i = 0; i < n; i++) out[base + i] = f(pixels[i * c + ch] * scale) - shift;
    }
  }
  return out;
}

/**
 * Decoded RGBA pixels -> the model input, as pocketcnn.runtime.images.preprocess.
 * spec: {channels, crop, resize, mean, std}; layout "NCHW" (dims [1, C, S, S]) or "NHWC"
 * ([1, S, S, C]). Returns {data: Float32Array, dims}.
 */
export function preprocessPixels(rgba, width, height, spec, layout = "NCHW") {
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
  const dims = layout === "NHWC" ? [1, size, size, c] : [1, c, size, size];
  return { data: normalize(px, size, size, c, spec.mean, spec.std, layout), dims };
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

/** More pixels than this are refused from the file's header, before decoding (as the Python side). */
export const MAX_IMAGE_PIXELS = 64000000;

const u16be = (b, i) => (b[i] << 8) | b[i + 1];
const u16le = (b, i) => b[i] | (b[i + 1] << 8);
const u24le = (b, i) => b[i] | (b[i + 1] << 8) | (b[i + 2] << 16);
const u32be = (b, i) => ((b[i] << 24) >>> 0) + ((b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]);
const i32le = (b, i) => b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24);
const ascii = (b, i, n) => String.fromCharCode(...b.subarray(i, i + n));

/**
 * The format, width and height an image file's header declares, read without decoding:
 * {format, width, height}, or null when the bytes are not PNG, JPEG, GIF, WebP or BMP (or the
 * header is cut short). JPEG: the first SOF segment, found by walking the segment lengths.
 */
export function imageHeader(bytes) {
  const b = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const n = b.length;
  if (n >= 24 && b[0] === 0x89 && ascii(b, 1, 3) === "PNG" && ascii(b, 12, 4) === "IHDR") {
    return { format: "PNG", width: u32be(b, 16), height: u32be(b, 20) };
  }
  if (n >= 10 && (ascii(b, 0, 6) === "GIF87a" || ascii(b, 0, 6) === "GIF89a")) {
    return { format: "GIF", width: u16le(b, 6), height: u16le(b, 8) };
  }
  if (n >= 26 && ascii(b, 0, 2) === "BM") {
    if (i32le(b, 14) === 12) return { format: "BMP", width: u16le(b, 18), height: u16le(b, 20) };
    return { format: "BMP", width: Math.abs(i32le(b, 18)), height: Math.abs(i32le(b, 22)) };
  }
  if (n >= 30 && ascii(b, 0, 4) === "RIFF" && ascii(b, 8, 4) === "WEBP") {
    const chunk = ascii(b, 12, 4);
    if (chunk === "VP8 ") return { format: "WebP", width: u16le(b, 26) & 0x3fff, height: u16le(b, 28) & 0x3fff };
    if (chunk === "VP8L" && b[20] === 0x2f) {
      const bits = (b[21] | (b[22] << 8) | (b[23] << 16) | (b[24] << 24)) >>> 0;
      return { format: "WebP", width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 };
    }
    if (chunk === "VP8X") return { format: "WebP", width: u24le(b, 24) + 1, height: u24le(b, 27) + 1 };
    return null;
  }
  if (n >= 4 && b[0] === 0xff && b[1] === 0xd8) {
    let pos = 2;
    while (pos + 4 <= n) {
      if (b[pos] !== 0xff) return null;
      let marker = b[pos + 1];
      while (marker === 0xff && pos + 2 < n) marker = b[++pos + 1]; // fill bytes
      if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
        pos += 2;
        continue;
      }
      if (marker === 0xd9 || marker === 0xda) return null; // end of image, or scan data before any frame header
      const isSof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
      if (isSof) return pos + 9 <= n ? { format: "JPEG", width: u16be(b, pos + 7), height: u16be(b, pos + 5) } : null;
      pos += 2 + u16be(b, pos + 2);
    }
    return null;
  }
  return null;
}

/**
 * Refuse a file from its header, before any decoding: not a format the page reads, or more
 * pixels than MAX_IMAGE_PIXELS. Throws an Error whose message says why; returns the header.
 */
export function checkImageHeader(bytes) {
  if (bytes.length === 0) throw new Error("empty, not an image");
  const head = imageHeader(bytes);
  if (!head) throw new Error("not an image file the page reads (PNG, JPEG, GIF, WebP or BMP)");
  const pixels = head.width * head.height;
  if (pixels > MAX_IMAGE_PIXELS) {
    throw new Error(`image of ${head.width}x${head.height} = ${pixels} pixels is over the limit of `
      + `${MAX_IMAGE_PIXELS} (possible decompression bomb)`);
  }
  if (pixels === 0) throw new Error(`${head.format} header declares an empty image (${head.width}x${head.height})`);
  return head;
}

/**
 * A Blob (File) -> {rgba: Uint8Array, width, height}: the file's own pixels, with the EXIF
 * orientation applied (as PIL's ImageOps.exif_transpose), no colour-profile conversion and
 * unpremultiplied alpha. The header is checked first (checkImageHeader): a refused file is
 * never handed to the decoder. Throws an Error whose message says why the file is not usable.
 */
export async function decodeImage(blob) {
  checkImageHeader(new Uint8Array(await blob.arrayBuffer()));
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      imageOrientation: "from-image",
      premultiplyAlpha: "none",
      colorSpaceConversion: "none",
    });
  } catch (err) {
    throw new Error("not an image file the browser can decode");
  }
  try {
    const pixels = bitmap.width * bitmap.height;
    if (pixels > MAX_IMAGE_PIXELS) { // a header that understated the size
      throw new Error(`image of ${bitmap.width}x${bitmap.height} = ${pixels} pixels is over the limit of ${MAX_IMAGE_PIXELS}`);
    }
    const rgba = readWithWebGL(bitmap) || readWith2D(bitmap);
    return { rgba, width: bitmap.width, height: bitmap.height };
  } finally {
    bitmap.close();
  }
}

/** A Blob -> the model input ({data, dims}), as the Python runtime's preprocess; layout "NCHW" or "NHWC". */
export async function preprocessBlob(blob, spec, layout = "NCHW") {
  const img = await decodeImage(blob);
  return preprocessPixels(img.rgba, img.width, img.height, spec, layout);
}
