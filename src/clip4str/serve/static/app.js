// clip4str web page: send each picked or dropped image to v1/explain, show the reading and attention map.
"use strict";

const drop = document.getElementById("drop");
const input = document.getElementById("file-input");
const results = document.getElementById("results");
const statusLine = document.getElementById("status");
const template = document.getElementById("result-template");

function probColour(p) {
  // red (unsure) to green (sure), light so the character stays readable
  const hue = Math.round(120 * Math.max(0, Math.min(1, p)));
  return `hsl(${hue}, 70%, 88%)`;
}

function showReading(card, reading) {
  card.querySelector(".text").textContent = reading.text;
  card.querySelector(".confidence").textContent = `confidence ${reading.confidence.toFixed(4)}`;
  const chars = card.querySelector(".chars");
  chars.replaceChildren();
  const letters = Array.from(reading.text);
  reading.char_probs.forEach((p, i) => {
    const chip = document.createElement("span");
    chip.className = i < letters.length ? "char" : "char eos";
    const glyph = document.createElement("b");
    glyph.textContent = i < letters.length ? letters[i] : "end";
    const prob = document.createElement("small");
    prob.textContent = p.toFixed(3);
    chip.append(glyph, prob);
    chip.style.background = probColour(p);
    chip.title = `${i < letters.length ? "character " + (i + 1) : "end of text"}: probability ${p.toFixed(4)}`;
    chars.append(chip);
  });
  if (reading.figure_png) {
    const map = card.querySelector(".attention");
    map.src = `data:image/png;base64,${reading.figure_png}`;
    map.classList.add("ready");
  }
}

async function readOne(file) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = file.name;
  const thumb = card.querySelector(".thumb");
  thumb.src = URL.createObjectURL(file);
  thumb.onload = () => URL.revokeObjectURL(thumb.src);
  results.prepend(card);
  const body = new FormData();
  body.append("image", file, file.name);
  try {
    const response = await fetch("v1/explain?figure=true", { method: "POST", body });
    const payload = await response.json();
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      throw new Error(`${payload.detail || response.statusText}${retry ? ` (retry in ${retry} s)` : ""}`);
    }
    showReading(card, payload.results[0]);
    card.dataset.state = "done";
  } catch (err) {
    card.querySelector(".error").textContent = `error: ${err.message}`;
    card.dataset.state = "error";
  }
}

async function readAll(files) {
  const images = Array.from(files);
  if (!images.length) return;
  statusLine.textContent = `reading ${images.length} image(s)…`;
  await Promise.all(images.map(readOne));
  statusLine.textContent = `read ${images.length} image(s)`;
}

input.addEventListener("change", () => {
  readAll(input.files);
  input.value = "";
});
["dragenter", "dragover"].forEach((type) =>
  drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }),
);
["dragleave", "drop"].forEach((type) =>
  drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.remove("over");
  }),
);
drop.addEventListener("drop", (event) => readAll(event.dataTransfer.files));
