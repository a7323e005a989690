// The page of `audio-cls serve`: upload a file or record one, then show the top classes and a
// timeline of the windows. Plain browser APIs only (no build step, nothing from a CDN).
"use strict";

const $ = (id) => document.getElementById(id);
let classes = [];
let topK = 5;

function colour(label) {
  // a stable hue per class, spread around the wheel
  const i = Math.max(0, classes.indexOf(label));
  return `hsl(${Math.round((i * 137.5) % 360)}, 60%, 55%)`;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function loadInfo() {
  // the model loads after the server starts: retry a bounded number of times
  for (let attempt = 0; attempt < 60; attempt++) {
    try {
      const response = await fetch("/info");
      if (response.ok) {
        const info = await response.json();
        classes = info.classes;
        topK = Math.min(5, classes.length);
        $("model").textContent =
          `${info.model}: ${info.num_classes} classes, ${info.sample_rate} Hz, ` +
          `${info.window_sec.toFixed(2)} s windows (audio-cls ${info.version})`;
        document.body.dataset.ready = "true";
        return;
      }
    } catch (err) {
      // server not reachable yet: retry below
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  showError("the model did not load; see /health");
}

async function predict(body, query, label) {
  showError("");
  setStatus(`classifying ${label}...`);
  const started = performance.now();
  try {
    const response = await fetch(`/predict?top_k=${topK}${query}`, { method: "POST", ...body });
    const answer = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      throw new Error(`${response.status}: ${answer.detail || response.statusText}`);
    }
    render(answer, label);
    setStatus(`done in ${Math.round(performance.now() - started)} ms`);
  } catch (err) {
    setStatus("");
    showError(err.message);
  }
}

function render(answer, label) {
  $("result").hidden = false;
  $("source").textContent = `(${label})`;
  $("duration").textContent = `(${answer.duration_sec.toFixed(2)} s)`;

  const top = $("top");
  top.replaceChildren();
  for (const { label: name, prob } of answer.top) {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.className = "label";
    text.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(prob * 100).toFixed(1)}%`;
    bar.style.background = colour(name);
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = prob.toFixed(3);
    item.append(text, bar, value);
    top.append(item);
  }

  const timeline = $("timeline");
  timeline.replaceChildren();
  const windows = answer.windows || [];
  const span = Math.max(answer.duration_sec, ...windows.map((w) => w.end), 1e-6);
  // overlapping windows go to separate lanes so that each stays visible
  const lanes = [];
  for (const w of windows) {
    let lane = lanes.findIndex((end) => end <= w.start + 1e-9);
    if (lane < 0) {
      lane = lanes.length;
      lanes.push(0);
    }
    lanes[lane] = w.end;
    const block = document.createElement("div");
    block.className = "window";
    block.style.left = `${(w.start / span) * 100}%`;
    block.style.width = `${((w.end - w.start) / span) * 100}%`;
    block.style.top = `${lane * 26}px`;
    block.style.background = colour(w.label);
    block.title = `${w.start.toFixed(2)}-${w.end.toFixed(2)} s: ${w.label} ${w.prob.toFixed(3)}`;
    block.textContent = w.label;
    timeline.append(block);
  }
  timeline.style.height = `${Math.max(1, lanes.length) * 26}px`;
  $("axis").textContent = `0 s ... ${span.toFixed(2)} s, ${windows.length} windows`;
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  predict({ body: form }, "", file.name);
  $("file").value = ""; // choosing the same file again fires "change" again
});

// Recording: MediaRecorder's compressed clip is decoded here by the browser (Web Audio), and
// sent as raw float32 PCM, so the server needs no ffmpeg for WebM/Opus.
let recorder = null;

async function toggleRecording() {
  if (recorder) {
    recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError("the microphone is only available on localhost or over HTTPS in this browser");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError(`no microphone: ${err.message}`);
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
  recorder.addEventListener("stop", async () => {
    stream.getTracks().forEach((track) => track.stop());
    recorder = null;
    $("record").textContent = "Record";
    $("record").classList.remove("recording");
    try {
      const encoded = await new Blob(chunks).arrayBuffer();
      const context = new AudioContext();
      const audio = await context.decodeAudioData(encoded);
      context.close();
      const mono = new Float32Array(audio.length);
      for (let c = 0; c < audio.numberOfChannels; c++) {
        const channel = audio.getChannelData(c);
        for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / audio.numberOfChannels;
      }
      const query = `&format=f32le&sample_rate=${audio.sampleRate}`;
      const headers = { "Content-Type": "application/octet-stream" };
      predict({ body: mono.buffer, headers }, query, "recording");
    } catch (err) {
      showError(`the recording could not be decoded: ${err.message}`);
    }
  });
  recorder.start();
  $("record").textContent = "Stop";
  $("record").classList.add("recording");
  setStatus("recording...");
}

$("record").addEventListener("click", toggleRecording);
loadInfo();
