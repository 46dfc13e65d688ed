// Where to connect, as jsqueue reads it: JSQUEUE_URL (comma-separated, user:password@ or a token@
// allowed, as in nats://user:pw@host:4222) and JSQ_PREFIX. nats.js takes credentials as options,
// not from the URL, so they are moved there.
export const prefix = process.env.JSQ_PREFIX ?? "jsq";

export function connectOptions(name) {
  const urls = (process.env.JSQUEUE_URL ?? "nats://127.0.0.1:4222").split(",");
  const options = { name, servers: [] };
  for (const raw of urls) {
    const url = new URL(raw.trim());
    if (url.username && url.password) {
      options.user = decodeURIComponent(url.username);
      options.pass = decodeURIComponent(url.password);
    } else if (url.username) {
      options.token = decodeURIComponent(url.username);
    }
    options.servers.push(`${url.protocol}//${url.host}`);
  }
  return options;
}
