// BACKBEAT from Node.js: stream beats, change the tempo (and see the pending change on the
// stream), submit a claim, print a bar report.
//
//   PULSE_ADDR=127.0.0.1:7070 REVERB_ADDR=127.0.0.1:7072 BACKBEAT_API_TOKEN=<token> node client.js
//
// Environment: PULSE_ADDR (required), REVERB_ADDR (claims and the bar report; skipped when
// unset), BACKBEAT_API_TOKEN (bearer token for SetTempo, SubmitClaims and report replays), BEATS (beats to stream, default 8),
// TEMPO_STEP (relative tempo change, default 0.05 = +5 %; 0 skips it), REPORT_TIMEOUT_MS.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

// The repository's own proto/ tree: no generated code, no copies.
const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");

// int64/uint64 fields (beat_index, term, revision, counts) arrive as *strings*: a JavaScript
// number loses precision above 2^53. Send them as strings (or numbers below 2^53) too.
const LOADER_OPTIONS = {
  keepCase: true, // field names as in the .proto (beat_index, not beatIndex)
  longs: String, // int64/uint64 -> decimal strings
  enums: String, // enums by name, e.g. "TASK_STATE_EXECUTING"
  defaults: true, // unset scalars as their zero value
  oneofs: true, // StreamBeatsResponse.event names the field that is set
  includeDirs: [PROTO_ROOT],
};

const definition = protoLoader.loadSync(
  ["backbeat/v1/pulse_service.proto", "backbeat/v1/reverb_service.proto"],
  LOADER_OPTIONS,
);
const v1 = grpc.loadPackageDefinition(definition).backbeat.v1;

const env = process.env;
const pulseAddr = env.PULSE_ADDR;
const reverbAddr = env.REVERB_ADDR || "";
const token = env.BACKBEAT_API_TOKEN || "";
const beatsWanted = Number(env.BEATS || 8);
const tempoStep = Number(env.TEMPO_STEP ?? 0.05);
const reportTimeoutMs = Number(env.REPORT_TIMEOUT_MS || 15000);
if (!pulseAddr) {
  console.error("set PULSE_ADDR=host:port of a pulse replica");
  process.exit(2);
}

const credentials = grpc.credentials.createInsecure();
const pulse = new v1.PulseService(pulseAddr, credentials);
const reverb = reverbAddr ? new v1.ReverbService(reverbAddr, credentials) : null;

function authMetadata() {
  const md = new grpc.Metadata();
  if (token) md.set("authorization", `Bearer ${token}`);
  return md;
}

function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + 10000 }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

function seconds(ts) {
  // google.protobuf.Timestamp with longs: String -> { seconds: "1700000000", nanos: 5 }
  return Number(ts.seconds) + ts.nanos / 1e9;
}

// 1. Stream beats until `count` beats have arrived. Resolves with the beats seen.
// `onBeat(n)` is called after the n-th beat (main changes the tempo halfway through).
function streamBeats(count, onBeat = () => {}) {
  return new Promise((resolve, reject) => {
    const beats = [];
    const call = pulse.StreamBeats({ start_beat: "0", progress_interval_ms: 1000 });
    call.on("data", (msg) => {
      if (msg.event === "timeline") {
        const t = msg.timeline;
        console.log(`timeline: ${t.tempo_bpm} BPM, bar ${t.bar_length}, revision ${t.revision}`);
      } else if (msg.event === "pending") {
        // A tempo change accepted but not in effect yet: from effective_beat (a downbeat) on,
        // beats follow p.timeline. Sent as soon as the leader accepts it.
        const p = msg.pending;
        const ramp = p.ramp_target_tempo_bpm ? `, ramping to ${p.ramp_target_tempo_bpm} BPM` : "";
        console.log(
          `pending: ${p.timeline.tempo_bpm} BPM from beat ${p.effective_beat} ` +
            `(revision ${p.timeline.revision})${ramp}`,
        );
      } else if (msg.event === "beat") {
        const b = msg.beat;
        const lateMs = (Date.now() / 1000 - seconds(b.scheduled_time)) * 1000;
        console.log(
          `beat ${b.beat_index}${b.downbeat ? " (downbeat)" : ""} ${b.phase} ` +
            `${b.tempo_bpm} BPM term ${b.term} window ${b.window_id.slice(0, 8)} ` +
            `+${lateMs.toFixed(1)} ms`,
        );
        beats.push(b);
        onBeat(beats.length);
        if (beats.length >= count) {
          call.cancel();
          resolve(beats);
        }
      }
    });
    call.on("error", (err) => {
      if (err.code === grpc.status.CANCELLED && beats.length >= count) return;
      reject(err);
    });
  });
}

// 2. Change the tempo by `step` (at most ±10 %); it takes effect at the next downbeat.
async function changeTempo(step) {
  const { timeline } = await unary(pulse, "GetTimeline", {});
  const target = Math.round(timeline.tempo_bpm * (1 + step) * 100) / 100;
  const res = await unary(
    pulse,
    "SetTempo",
    { tempo_bpm: target, request_id: `node-${process.pid}-${Date.now()}` },
    authMetadata(),
  );
  console.log(`tempo: ${timeline.tempo_bpm} -> ${target} BPM from beat ${res.effective_beat}`);
  return res;
}

// 3. Submit one claim over the bidirectional SubmitClaims stream; resolves with its outcome.
function submitClaim(beat) {
  return new Promise((resolve, reject) => {
    const call = reverb.SubmitClaims(authMetadata()); // the reverb needs the token too
    call.on("data", (res) => {
      resolve(res.outcomes[0]);
      call.end();
    });
    call.on("error", reject);
    const hlcMs = Date.now().toString(16);
    call.write({
      claims: [
        {
          agent_id: "agent:node",
          task_id: "task:node-1",
          beat_index: beat.beat_index, // a string: int64
          state: "TASK_STATE_EXECUTING",
          beats_left: 2,
          progress: 0.5,
          notes: "hello from Node.js",
          hlc: `${hlcMs}:0000:0001`,
          cluster_id: beat.cluster_id,
        },
      ],
    });
  });
}

// 4. Wait for the bar report of the window the claim went into.
function barReport(fromBeat) {
  return new Promise((resolve, reject) => {
    const call = reverb.StreamBarReports({ start_beat: fromBeat }, authMetadata()); // a replay needs the token
    const timer = setTimeout(() => {
      call.cancel();
      reject(new Error(`no bar report for the bar from beat ${fromBeat} in ${reportTimeoutMs} ms`));
    }, reportTimeoutMs);
    call.on("data", ({ report }) => {
      if (BigInt(report.from_beat) < BigInt(fromBeat)) return;
      clearTimeout(timer);
      call.cancel();
      resolve(report);
    });
    call.on("error", (err) => {
      if (err.code !== grpc.status.CANCELLED) {
        clearTimeout(timer);
        reject(err);
      }
    });
  });
}

async function main() {
  // Change the tempo halfway through the stream, so that the stream shows the pending change.
  let change = null;
  const beats = await streamBeats(beatsWanted, (seen) => {
    if (tempoStep && !change && seen >= Math.ceil(beatsWanted / 2)) {
      change = changeTempo(tempoStep);
      change.catch(() => {}); // awaited below; no unhandled rejection meanwhile
    }
  });
  if (change) await change;
  if (!reverb) {
    console.log("REVERB_ADDR not set: skipping the claim and the bar report");
    return;
  }
  const last = beats[beats.length - 1];
  const outcome = await submitClaim(last);
  console.log(`claim for beat ${last.beat_index}: ${outcome.result} ${outcome.reason}`.trim());
  const report = await barReport(last.bar_start_beat);
  console.log(
    `bar report ${report.from_beat}-${report.to_beat} [${report.window_id.slice(0, 8)}]: ` +
      `${report.agents_reporting} agents, ${report.accepted_claims} accepted, ` +
      `${report.duplicate_claims} duplicate, ${report.late_claims} late, ` +
      `on-time reviews ${report.on_time_reviews}, drift ${report.tempo_drift_ms} ms`,
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`error: ${err.message || err}`);
    process.exit(1);
  },
);
