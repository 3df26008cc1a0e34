"""The Lua scripts of the window store. Every write of a claim happens in one of them, so the
per-window aggregates never disagree with the buffered claims they summarise.

Keys are built inside the scripts from the cluster prefix ``backbeat:{<cluster>}`` (passed as
ARGV[1]); KEYS[1] is always a key of the same hash tag, which routes the script to the right
slot. The names must match ``backbeat.core.keys`` (checked by the tests).
"""

from __future__ import annotations

from typing import Final

# ARGV: prefix, batch_id, now_ms, late_horizon_ms, dead_letter_maxlen, batch_ttl_s,
#   nwin, nwin × (window_id, from_beat, to_beat),
#   ncand, ncand × window index (late/reject targets, oldest first),
#   nrec (claims + rejects, in arrival order),
#   claims: one flat JSON array (decoded by cjson, in C), CLAIM_FIELDS values per claim:
#     window index, agent, task, beat, state, beats_left, signed 1|0, key_id, traceparent,
#     payload length,
#   payloads: the claims' INT-B JSON payloads, concatenated (cut by their lengths),
#   nrej, nrej × (position among all records, reason, detail, payload, traceparent,
#     received_ns, size) -- rejects are separate arguments because their payload is arbitrary.
# Two arguments for all claims keep the client's command encoding cheap, and cjson parses the
# metadata far faster than splitting strings in Lua. Returns one character per record, in
# order: a(ccepted) d(uplicate) l(ate) r(ejected).
#
# Cost: a call into Redis from Lua costs far more than a few table operations, so the script
# makes one call per claim only where the layout needs it (the XADD of an accepted claim):
# dedupe members are checked with one SMISMEMBER per window and added with one SADD, open
# help promises are read with one HMGET and written with one HSET / HDEL, counters are summed
# in Lua and written once per batch. The script is atomic, so reading everything first and
# writing at the end is equivalent to checking and writing claim by claim (repeats inside the
# batch are caught by a table of the members seen so far).
CLAIM_FIELDS: Final = 10
APPEND: Final = r"""
local prefix = ARGV[1]
local batch_id = ARGV[2]
local now_ms = tonumber(ARGV[3])
local late_horizon_ms = tonumber(ARGV[4])
local dl_maxlen = ARGV[5]
local batch_ttl = tonumber(ARGV[6])

local batch_key = nil
if batch_id ~= '' then
  batch_key = prefix .. ':batch:' .. batch_id
  local done = redis.call('GET', batch_key)
  if done then return done end
end

local i = 7
local nwin = tonumber(ARGV[i]); i = i + 1
local wins = {}
for w = 1, nwin do
  wins[w] = {id = ARGV[i], from = ARGV[i + 1], to = ARGV[i + 2],
             p = prefix .. ':w:' .. ARGV[i] .. ':'}
  i = i + 3
end
local ncand = tonumber(ARGV[i]); i = i + 1
local cands = {}
for c = 1, ncand do cands[c] = tonumber(ARGV[i]); i = i + 1 end
local nrec = tonumber(ARGV[i]); i = i + 1
local m = cjson.decode(ARGV[i]); i = i + 1
local payloads = ARGV[i]; i = i + 1
local nrej = tonumber(ARGV[i]); i = i + 1
local rejects = {}
for r = 1, nrej do
  rejects[tonumber(ARGV[i])] = i + 1
  i = i + 7
end
local nclaims = #m / 10

local function chunked(cmd, key, list, each)
  -- One call per 1,000 arguments at most (Lua's unpack has a stack limit).
  local n = #list
  for s = 1, n, 1000 do
    local reply = redis.call(cmd, key, unpack(list, s, math.min(s + 999, n)))
    if each then each(s, reply) end
  end
end

-- Pass 1: dedupe members by window, and the tasks whose help promise may matter.
local PROMISE_STATES = {waiting = true, executing = true, review = true, done = true}
local member = {}       -- claim number -> dedupe member
local by_win = {}       -- window index -> {claim numbers}, {members}
local task_list, task_seen = {}, {}
for j = 1, nclaims do
  local o = (j - 1) * 10
  local w, task = m[o + 1], m[o + 3]
  local mem = m[o + 2] .. '\31' .. task .. '\31' .. m[o + 4]
  member[j] = mem
  local g = by_win[w]
  if g == nil then g = {{}, {}}; by_win[w] = g end
  local n = #g[1] + 1
  g[1][n] = j
  g[2][n] = mem
  if PROMISE_STATES[m[o + 5]] and not task_seen[task] then
    task_seen[task] = true
    task_list[#task_list + 1] = task
  end
end

-- One SMISMEMBER per window: which claims were seen in an earlier batch.
local known = {}        -- claim number -> true when already in the dedupe set
for w, g in pairs(by_win) do
  local js = g[1]
  chunked('SMISMEMBER', wins[w].p .. 'dedupe', g[2], function(s, reply)
    for k = 1, #reply do
      if reply[k] == 1 then known[js[s + k - 1]] = true end
    end
  end)
end

-- One HMGET: open help promises (task -> {start, deadline} | false), updated as we go.
local waiting_key = prefix .. ':waiting'
local waiting = {}
local waiting_dirty = {}
chunked('HMGET', waiting_key, task_list, function(s, reply)
  for k = 1, #reply do
    local raw = reply[k]
    local p = false
    if raw then
      local a, b = string.match(raw, '^(-?%d+):(-?%d+)$')
      p = {tonumber(a), tonumber(b)}
    end
    waiting[task_list[s + k - 1]] = p
  end
end)
local function promise(task)
  local p = waiting[task]
  if p == nil then  -- not prefetched (cannot happen; kept for safety)
    local raw = redis.call('HGET', waiting_key, task)
    p = false
    if raw then
      local a, b = string.match(raw, '^(-?%d+):(-?%d+)$')
      p = {tonumber(a), tonumber(b)}
    end
    waiting[task] = p
  end
  return p
end

local sealed = {}
local function is_sealed(w)
  local s = sealed[w]
  if s == nil then
    s = redis.call('HGET', wins[w].p .. 'agg', 'sealed') == '1'
    sealed[w] = s
  end
  return s
end

-- Late claims and rejects are counted in the oldest not-yet-sealed candidate window.
local target = nil
local function target_window()
  if target == nil then
    target = 0
    for _, w in ipairs(cands) do
      if not is_sealed(w) then target = w; break end
    end
  end
  return target
end

local counts = {}   -- window index -> field -> increment
local function bump(w, field)
  local c = counts[w]
  if c == nil then c = {}; counts[w] = c end
  c[field] = (c[field] or 0) + 1
end
local totals = {}
local function total(field, n)
  totals[field] = (totals[field] or 0) + (n or 1)
end
local function add_member(sets, w, member)
  local s = sets[w]
  if s == nil then s = {}; sets[w] = s end
  s[member] = true
end
local agents, ontime, helped, keyids = {}, {}, {}, {}
local fresh_members = {}  -- window index -> {members new to the dedupe set}
local seen = {}           -- members seen earlier in this batch
local STATE_FIELD = {}

local late_stream = prefix .. ':late'
local late_minid = tostring(now_ms - late_horizon_ms)
local dead_stream = prefix .. ':deadletter'

local out = {}
local claim_no = 0
local payload_pos = 1
local n_accepted, n_duplicate, n_late = 0, 0, 0
for k = 1, nrec do
  local r = rejects[k]
  if r == nil then
    claim_no = claim_no + 1
    local o = (claim_no - 1) * 10
    local w, task, beat, state = m[o + 1], m[o + 3], m[o + 4], m[o + 5]
    local left, tp, len = m[o + 6], m[o + 9], m[o + 10]
    local payload = string.sub(payloads, payload_pos, payload_pos + len - 1)
    payload_pos = payload_pos + len
    local mem = member[claim_no]
    local fresh = not (known[claim_no] or seen[mem])
    if fresh then
      seen[mem] = true
      local f = fresh_members[w]
      if f == nil then f = {}; fresh_members[w] = f end
      f[#f + 1] = mem
    end
    if is_sealed(w) then
      -- The window is sealed (its report is being or has been published): late.
      local t = target_window()
      local field = 'late'
      if fresh then n_late = n_late + 1 else field = 'duplicate'; n_duplicate = n_duplicate + 1 end
      out[k] = string.sub(field, 1, 1)
      if t > 0 then bump(t, field) else total('unassigned') end
      if fresh then
        local counted_in = ''
        if t > 0 then counted_in = wins[t].id end
        redis.call('XADD', late_stream, 'MINID', '~', late_minid, '*',
                   'window', wins[w].id, 'counted_in', counted_in, 'c', payload, 'tp', tp)
      end
    elseif not fresh then
      out[k] = 'd'
      n_duplicate = n_duplicate + 1
      bump(w, 'duplicate')
    else
      out[k] = 'a'
      n_accepted = n_accepted + 1
      local c = counts[w]
      if c == nil then c = {}; counts[w] = c end
      c.accepted = (c.accepted or 0) + 1
      local sf = STATE_FIELD[state]
      if sf == nil then sf = 'state:' .. state; STATE_FIELD[state] = sf end
      c[sf] = (c[sf] or 0) + 1
      local win = wins[w]
      if tp ~= '' then
        redis.call('XADD', win.p .. 'claims', '*', 'c', payload, 'tp', tp)
      else
        redis.call('XADD', win.p .. 'claims', '*', 'c', payload)
      end
      add_member(agents, w, m[o + 2])
      if m[o + 7] == 1 then
        c.signed = (c.signed or 0) + 1
        if m[o + 8] ~= '' then add_member(keyids, w, m[o + 8]) end
      end
      local b = beat
      if (state == 'review' or state == 'done') and left >= 0 then
        add_member(ontime, w, task)
      end
      if state == 'waiting' then
        if left >= 0 then
          local p = promise(task)
          local deadline = b + left
          if (not p) or p[2] < b then
            waiting[task] = {b, deadline}
          else
            waiting[task] = {math.min(p[1], b), math.min(p[2], deadline)}
          end
          waiting_dirty[task] = true
        end
      elseif state == 'executing' or state == 'review' or state == 'done' then
        local p = promise(task)
        if p then
          if b > p[1] and b <= p[2] then
            add_member(helped, w, task)
            waiting[task] = false
            waiting_dirty[task] = true
          elseif b > p[2] then
            waiting[task] = false
            waiting_dirty[task] = true
          end
        end
      end
    end
  else
    local t = target_window()
    local reason = ARGV[r]
    out[k] = 'r'
    total('rejected')
    total('rejected:' .. reason)
    local counted_in = ''
    if t > 0 then
      bump(t, 'rejected:' .. reason)
      counted_in = wins[t].id
    else
      total('unassigned')
    end
    redis.call('XADD', dead_stream, 'MAXLEN', '~', dl_maxlen, '*',
               'reason', reason, 'detail', ARGV[r + 1], 'payload', ARGV[r + 2],
               'tp', ARGV[r + 3], 'received_ns', ARGV[r + 4], 'size', ARGV[r + 5],
               'counted_in', counted_in)
  end
end
total('received', nrec)
if n_accepted > 0 then total('accepted', n_accepted) end
if n_duplicate > 0 then total('duplicate', n_duplicate) end
if n_late > 0 then total('late', n_late) end

for w, list in pairs(fresh_members) do
  local dedupe = wins[w].p .. 'dedupe'
  chunked('SADD', dedupe, list)
  -- A late claim may create the dedupe set of a reported window after its expiry was set:
  -- give it the window's remaining lifetime.
  if is_sealed(w) and redis.call('PTTL', dedupe) == -1 then
    local ttl = redis.call('PTTL', wins[w].p .. 'agg')
    if ttl > 0 then redis.call('PEXPIRE', dedupe, ttl) end
  end
end

local function sadd_all(key, set)
  local members = {}
  for mm in pairs(set) do members[#members + 1] = mm end
  chunked('SADD', key, members)
end

for w, c in pairs(counts) do
  local win = wins[w]
  local agg = win.p .. 'agg'
  redis.call('HSET', agg, 'from_beat', win.from, 'to_beat', win.to)
  for field, n in pairs(c) do redis.call('HINCRBY', agg, field, n) end
  redis.call('ZADD', prefix .. ':windows', 'NX', win.from, win.id)
  if redis.call('HGET', agg, 'reported') ~= '1' then
    redis.call('ZADD', prefix .. ':windows:pending', 'NX', win.from, win.id)
  end
end
for w, s in pairs(agents) do sadd_all(wins[w].p .. 'agents', s) end
for w, s in pairs(ontime) do sadd_all(wins[w].p .. 'ontime', s) end
for w, s in pairs(helped) do sadd_all(wins[w].p .. 'helped', s) end
for w, s in pairs(keyids) do sadd_all(wins[w].p .. 'keyids', s) end
local open, closed = {}, {}
for task in pairs(waiting_dirty) do
  local p = waiting[task]
  if p then
    open[#open + 1] = task
    open[#open + 1] = string.format('%d:%d', p[1], p[2])
  else
    closed[#closed + 1] = task
  end
end
chunked('HSET', waiting_key, open)
chunked('HDEL', waiting_key, closed)
local totals_key = prefix .. ':ingest'
for field, n in pairs(totals) do redis.call('HINCRBY', totals_key, field, n) end

local result = table.concat(out)
if batch_key then redis.call('SET', batch_key, result, 'EX', batch_ttl) end
return result
"""

# KEYS[1] = window aggregate hash. ARGV: prefix, window_id, from_beat, to_beat, now_ns.
# Seals once (idempotent) and snapshots the pulse's beat stats into the aggregate, so a
# retried rollup reads exactly the same figures. Returns
# {aggregate hash as a flat list, agents, on-time task count, helped task count, key ids}.
SEAL_AND_READ: Final = r"""
local prefix = ARGV[1]
local wid = ARGV[2]
local wp = prefix .. ':w:' .. wid .. ':'
local agg = wp .. 'agg'
if redis.call('HGET', agg, 'sealed') ~= '1' then
  redis.call('HSET', agg, 'sealed', '1', 'sealed_ns', ARGV[5],
             'from_beat', ARGV[3], 'to_beat', ARGV[4])
  local stats = redis.call('HGETALL', wp .. 'beats')
  for j = 1, #stats, 2 do
    redis.call('HSET', agg, 'beats.' .. stats[j], stats[j + 1])
  end
  redis.call('ZADD', prefix .. ':windows', 'NX', ARGV[3], wid)
  if redis.call('HGET', agg, 'reported') ~= '1' then
    redis.call('ZADD', prefix .. ':windows:pending', 'NX', ARGV[3], wid)
  end
end
return {
  redis.call('HGETALL', agg),
  redis.call('SMEMBERS', wp .. 'agents'),
  redis.call('SCARD', wp .. 'ontime'),
  redis.call('SCARD', wp .. 'helped'),
  redis.call('SMEMBERS', wp .. 'keyids'),
}
"""

# KEYS[1] = window aggregate hash. ARGV: prefix, window_id, report_json, now_ns, now_ms,
# retention_ms. Keeps the first report, seals the window if it somehow was not, starts the
# retention expiry of every key of the window and forgets windows whose retention has passed.
MARK_REPORTED: Final = r"""
local prefix = ARGV[1]
local wid = ARGV[2]
local wp = prefix .. ':w:' .. wid .. ':'
local agg = wp .. 'agg'
local now_ms = tonumber(ARGV[5])
local retention_ms = tonumber(ARGV[6])
if redis.call('HGET', agg, 'reported') ~= '1' then
  redis.call('HSET', agg, 'reported', '1', 'reported_ns', ARGV[4], 'report', ARGV[3])
  redis.call('HSETNX', agg, 'sealed', '1')
  redis.call('HSETNX', agg, 'sealed_ns', ARGV[4])
  for _, suffix in ipairs({'agg', 'claims', 'dedupe', 'agents', 'ontime', 'helped', 'keyids',
                           'beats'}) do
    redis.call('PEXPIRE', wp .. suffix, retention_ms)
  end
  redis.call('ZREM', prefix .. ':windows:pending', wid)
  redis.call('ZREM', prefix .. ':windows:beats', wid)
  redis.call('ZADD', prefix .. ':windows:reported', now_ms, wid)
  local from_beat = redis.call('HGET', agg, 'from_beat')
  if from_beat then redis.call('ZADD', prefix .. ':windows', 'NX', from_beat, wid) end
end
local reported = prefix .. ':windows:reported'
local expired = redis.call('ZRANGEBYSCORE', reported, '-inf', now_ms - retention_ms,
                           'LIMIT', 0, 1000)
if #expired > 0 then
  redis.call('ZREM', prefix .. ':windows', unpack(expired))
  redis.call('ZREM', reported, unpack(expired))
end
return 1
"""
