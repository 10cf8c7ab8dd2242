// Deterministic pseudo-random data shared by the benchmark pages (no network, no Math.random).
function rng(seed) {
  let s = seed >>> 0;
  return function () {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 4294967296;
  };
}
const FIRST = ["Ada", "Bruno", "Chen", "Dara", "Elif", "Farah", "Goran", "Hana", "Ivan", "Jun",
  "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma",
  "Vera", "Wei", "Ximena", "Yusuf", "Zoe"];
const LAST = ["Abbott", "Berg", "Castillo", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad",
  "Ito", "Jensen", "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quispe",
  "Rossi", "Schmidt", "Tanaka", "Usman", "Varga", "Weber", "Xu", "Yilmaz", "Zhang"];
const COMPANIES = ["Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay",
  "Stark Industries", "Wayne Enterprises", "Acme Corp", "Soylent", "Tyrell", "Cyberdyne",
  "Aperture", "Wonka", "Pied Piper", "Massive Dynamic", "Oscorp", "Gringotts", "Monarch"];
const CITIES = ["Berlin", "Lagos", "Lima", "Osaka", "Toronto", "Lisbon", "Nairobi", "Austin",
  "Krakow", "Jakarta", "Bogota", "Dublin", "Seoul", "Cairo", "Oslo", "Denver"];
const TITLES = ["Head of Growth", "VP Sales", "CTO", "Data Engineer", "Founder", "Marketing Lead",
  "Procurement Manager", "Operations Director", "Account Executive", "Product Manager"];
const WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " +
  "incididunt ut labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation " +
  "ullamco laboris nisi aliquip ex ea commodo consequat duis aute irure in reprehenderit " +
  "voluptate velit esse cillum fugiat nulla pariatur excepteur sint occaecat cupidatat non " +
  "proident sunt culpa qui officia deserunt mollit anim id est laborum").split(" ");
function pick(r, list) { return list[Math.floor(r() * list.length)]; }
function sentence(r, n) {
  const out = [];
  for (let i = 0; i < n; i++) out.push(pick(r, WORDS));
  const s = out.join(" ");
  return s.charAt(0).toUpperCase() + s.slice(1) + ".";
}
