// The pocketcnn page's service worker: after the first visit the page, its runtime and its
// model come from one cache, so the page starts without a network and a second visit
// downloads (almost) nothing.
//
// The page registers "sw.js?cache=NAME", NAME from offline.json: "pocketcnn-<model SHA-256>-<tag>".
// A new model (or page) is a new NAME: the browser installs this worker again under the new
// URL, it stores the page in the new cache, and once active it deletes every other
// pocketcnn cache and takes over the open pages.
//
//   install   store offline.json's "precache" list (the page: "./" is the document)
//   fetch     GET of a "cacheable" URL (the runtimes under static/, the model files) or a
//             precached one: from the cache, else from the network and then stored;
//             offline.json: from the network, the cache when offline; anything else
//             (the server's API: predictions, v1/model) goes to the network untouched.

const CACHE = new URL(self.location.href).searchParams.get("cache") || "pocketcnn-unnamed";
const PREFIX = "pocketcnn-";
const PLAN = "offline.json";
const scoped = (path) => new URL(path, self.registration.scope).href;

let planPromise = null;

// A worker whose cache a newer one deleted must not create it again: it reads with
// caches.match (which creates nothing) and writes only while its cache exists.
const lookup = (key) => caches.match(key, { cacheName: CACHE, ignoreVary: true });

async function store(key, response) {
  if (installing || await caches.has(CACHE)) await (await caches.open(CACHE)).put(key, response);
}

let installing = false;

async function loadPlan() {
  const stored = await lookup(scoped(PLAN));
  if (stored) return stored.json();
  const r = await fetch(scoped(PLAN), { cache: "no-store" });
  if (!r.ok) throw new Error(`GET ${PLAN}: ${r.status}`);
  const plan = await r.clone().json();
  await store(scoped(PLAN), r);
  return plan;
}

function plan() {
  if (!planPromise) planPromise = loadPlan().catch((err) => { planPromise = null; throw err; });
  return planPromise;
}

self.addEventListener("install", (event) => {
  installing = true;
  event.waitUntil((async () => {
    const p = await plan();
    if (p.cache !== CACHE) {
      // the model changed between the page's look and ours: refuse; the page registers again
      await caches.delete(CACHE);
      throw new Error(`offline.json names cache ${p.cache}, this worker was registered for ${CACHE}`);
    }
    const cache = await caches.open(CACHE);
    await cache.addAll(p.precache.map((u) => new Request(scoped(u), { cache: "no-cache" }))); // current bytes, as below
    installing = false;
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith(PREFIX) && name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

function isCacheable(p, url) {
  const rel = url.href.slice(self.registration.scope.length);
  if (p.precache.includes(rel) || (rel === "" || rel === "index.html")) return true;
  return p.cacheable.some((c) => (c.endsWith("/") ? rel.startsWith(c) : rel === c));
}

async function fromCache(request, key) {
  const hit = await lookup(key);
  if (hit) return hit;
  // what goes into a cache named by these files' hashes must be their current bytes: ask the
  // server (a 304 when the browser's copy is current), never a heuristically fresh HTTP-cache copy
  const r = await fetch(request, { cache: "no-cache" });
  if (r.ok && r.status === 200 && r.type === "basic") await store(key, r.clone());
  return r;
}

async function planFirstFromNetwork(request) {
  try {
    const r = await fetch(request, { cache: "no-store" });
    if (r.ok) {
      const p = await r.clone().json();
      if (p.cache === CACHE) await store(scoped(PLAN), r.clone());
    }
    return r;
  } catch (err) {
    const hit = await lookup(scoped(PLAN));
    if (hit) return hit;
    throw err;
  }
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin || !url.href.startsWith(self.registration.scope)) return;
  const rel = url.href.slice(self.registration.scope.length).split("?")[0];
  if (rel === PLAN) {
    event.respondWith(planFirstFromNetwork(request));
    return;
  }
  if (request.mode === "navigate") {
    if (rel !== "" && rel !== "index.html") return;
    // the document: "./" whatever its query (?mode=device)
    event.respondWith(fromCache(request, scoped("./")).catch(() => fetch(request)));
    return;
  }
  event.respondWith((async () => {
    let p;
    try {
      p = await plan();
    } catch {
      return fetch(request);
    }
    const clean = new URL(url.href.split("?")[0]);
    if (!isCacheable(p, clean)) return fetch(request);
    return fromCache(request, clean.href);
  })());
});
