// The playground: sends the form to the task endpoints with stream=true and appends the
// server-sent text as it arrives. Uses only fetch and the DOM (no external scripts).
"use strict";

const $ = (id) => document.getElementById(id);
let controller = null;

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function loadInfo() {
  const info = await (await fetch("/v1/info")).json();
  $("model").textContent = `${info.model} · ${info.max_length} positions`;
  for (const select of [$("language"), $("source-language")]) {
    for (const lang of info.languages) {
      const option = new Option(lang.name, lang.name);
      option.dataset.stopRule = lang.stop_rule;
      select.add(option);
    }
  }
  $("language").value = "Python";
  $("source-language").value = "C++";
  $("max-tokens").value = info.defaults.max_tokens;
  $("max-tokens").max = info.max_tokens;
  $("temperature").value = info.defaults.temperature;
  $("top-p").value = info.defaults.top_p;
  $("top-k").value = info.defaults.top_k;
  updateTask();
}

function updateTask() {
  const task = $("task").value;
  $("source-box").hidden = task !== "translate";
  $("language-label").textContent = task === "translate" ? "To" : "Language";
  const option = $("language").selectedOptions[0];
  const hasRule = option && option.dataset.stopRule === "true";
  $("stop-box").hidden = task !== "complete" || !hasRule;
}

function requestBody() {
  const task = $("task").value;
  const body = {
    code: $("prompt").value,
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    top_k: Number($("top-k").value),
    stream: true,
  };
  if (task === "translate") {
    body.source_language = $("source-language").value;
    body.target_language = $("language").value;
  } else {
    body.language = $("language").value;
  }
  if (task === "complete" && !$("stop-box").hidden) body.language_stop = $("language-stop").checked;
  return [task, body];
}

// Parse "data: ..." events out of the byte stream; calls onEvent(parsed JSON) for each.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function run(event) {
  event.preventDefault();
  const [task, body] = requestBody();
  const output = $("output");
  output.textContent = "";
  if (task === "complete") {
    const shown = document.createElement("span");
    shown.className = "prompt";
    shown.textContent = body.code;
    output.append(shown);
  }
  const generated = document.createElement("span");
  generated.id = "generated";
  output.append(generated);
  controller = new AbortController();
  $("run").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  const started = performance.now();
  try {
    const response = await fetch(`/v1/code/${task}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json();
      throw new Error(err.error ? err.error.message : response.statusText);
    }
    let reason = null;
    await readEvents(response, (data) => {
      if (data.error) throw new Error(data.error.message);
      const choice = data.choices[0];
      generated.textContent += choice.text;
      if (choice.finish_reason) reason = choice.finish_reason;
    });
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    setStatus(`done (${reason}) in ${seconds} s`);
  } catch (err) {
    if (err.name === "AbortError") setStatus("stopped");
    else setStatus(`error: ${err.message}`, true);
  } finally {
    $("run").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

$("task").addEventListener("change", updateTask);
$("language").addEventListener("change", updateTask);
$("form").addEventListener("submit", run);
$("stop").addEventListener("click", () => controller && controller.abort());
loadInfo().catch((err) => setStatus(`could not load /v1/info: ${err.message}`, true));
