// A JavaScript wasi:http task (StarlingMonkey's fetch event): answers with the path.
addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  event.respondWith(new Response(`hello from js: ${url.pathname}\n`, {
    headers: { "content-type": "text/plain" },
  }));
});
