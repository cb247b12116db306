// The console's shell: sign-in, the navigation, and the router (#/runs, #/runs/NAME,
// #/utilization, #/billing, #/audit). Each page is a module whose render(root, me, params)
// returns the function that stops what it left running (polling, a log follow).

import { ApiError, session, signIn, signOut } from "./api.js";
import { errorBox, h, replace } from "./ui.js";
import * as runs from "./runs.js";
import * as run from "./run.js";
import * as utilization from "./utilization.js";
import * as billing from "./billing.js";
import * as audit from "./audit.js";

const app = document.getElementById("app");
let me = null;
let stopPage = () => {};

const PAGES = [
  { path: "runs", title: "Runs", module: runs },
  { path: "utilization", title: "Utilization", module: utilization },
  { path: "billing", title: "Billing", module: billing, admin: true },
  { path: "audit", title: "Audit", module: audit, admin: true },
];

function signInPage(problem) {
  const key = h("input", {
    id: "key",
    name: "key",
    type: "password",
    autocomplete: "off",
    placeholder: "Your API key",
    "aria-label": "API key",
    required: true,
  });
  const message = h("p", { class: "error", role: "alert" }, problem || "");
  const form = h(
    "form",
    {
      class: "sign-in",
      onsubmit: async (event) => {
        event.preventDefault();
        message.textContent = "";
        try {
          me = await signIn(key.value);
          key.value = "";
          start();
        } catch (error) {
          message.textContent =
            error instanceof ApiError && error.code === 401
              ? "That key was refused: check it, or ask an admin for one (mcli admin users issue-key)."
              : error.message;
        }
      },
    },
    h("h1", {}, "runplane"),
    h("label", { for: "key" }, "API key"),
    key,
    h("button", { type: "submit" }, "Sign in"),
    message,
  );
  stopPage();
  replace(app, form);
  key.focus();
}

function shell() {
  const links = PAGES.filter((page) => !page.admin || me.role === "admin").map((page) =>
    h("a", { href: `#/${page.path}`, "data-page": page.path }, page.title),
  );
  const out = h(
    "button",
    {
      class: "link",
      onclick: async () => {
        await signOut();
        me = null;
        location.hash = "";
        signInPage("Signed out.");
      },
    },
    "Sign out",
  );
  const main = h("main", { id: "page" });
  replace(
    app,
    h("header", {}, h("a", { class: "brand", href: "#/runs" }, "runplane"), h("nav", {}, links), h("span", { class: "who" }, `${me.user} (${me.role})`), out),
    main,
  );
  return main;
}

let main = null;

async function route() {
  stopPage();
  stopPage = () => {};
  const [path, ...rest] = (location.hash.replace(/^#\/?/, "") || "runs").split("?")[0].split("/");
  const page = PAGES.find((candidate) => candidate.path === path) || PAGES[0];
  for (const link of app.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === page.path);
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const module = path === "runs" && rest.length ? run : page.module;
  const name = rest.map(decodeURIComponent).join("/");
  try {
    const stop = await module.render(main, me, { name, params });
    stopPage = stop || (() => {});
  } catch (error) {
    if (error instanceof ApiError && error.code === 401) return signInPage("Your session ended: sign in again.");
    replace(main, errorBox(error));
  }
}

function start() {
  main = shell();
  route();
}

window.addEventListener("hashchange", () => me && route());
window.addEventListener("runplane:unauthenticated", () => signInPage("Your session ended: sign in again."));

(async () => {
  try {
    me = await session();
  } catch (error) {
    replace(app, errorBox(error));
    return;
  }
  if (me) start();
  else signInPage();
})();
