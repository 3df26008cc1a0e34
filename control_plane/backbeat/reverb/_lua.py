"""The Lua scripts of the window store. Every write of a claim happens in one of them, so the
outcome counters never disagree with the claims logged in the windows' streams.

Keys are built inside the scripts from the cluster prefix ``backbeat:{<cluster>}`` (passed as
ARGV[1]); KEYS[1] is always a key of the same hash tag, which routes the script to the right
slot. The names must match ``backbeat.core.keys`` (checked by the tests).
"""

from __future__ import annotations

from typing import Final


#: Every script checks that the partition it writes or reads is the one the other components
#: configured: ``…:layout`` holds ``<partition>/<partitions>``, set by the first script to run
#: there. A component started with another ``--claim-partitions`` gets an error instead of
#: writing claims, or reading windows, that the others do not see. ``arg`` is the script's
#: ARGV index of the expected value.
def _layout_check(arg: int) -> str:
    return f"""
local layout_key = ARGV[1] .. ':layout'
local layout = redis.call('GET', layout_key)
if not layout then
  redis.call('SET', layout_key, ARGV[{arg}])
elseif layout ~= ARGV[{arg}] then
  return redis.error_reply('LAYOUT claims partition ' .. ARGV[{arg}] .. ' expected, '
    .. layout .. ' stored: every component must use the same --claim-partitions')
end
"""


# ARGV: prefix, batch_id, now_ms, late_horizon_ms, dead_letter_maxlen, batch_ttl_s, layout,
#   nwin, nwin x (window_id, from_beat, to_beat, members, metas, payloads, lengths,
#     traceparents, repeats) -- the batch's claims grouped by window, in arrival order:
#     members: JSON array of dedupe members ("agent US task US beat"), one per claim;
#     metas: the claims' log entry ``m`` (backbeat.core.claim_log), stored as it comes;
#     payloads: the claims' StatusClaim JSON, concatenated; lengths: JSON array of their lengths;
#     traceparents: JSON array of traceparents, or "" when no claim has one;
#     repeats: "1" when a member occurs twice in the group (the ingest knows), else "0";
#   ncand, ncand x window index (late/reject targets, oldest first),
#   nrej, nrej x (reason, detail, payload, traceparent, received_ns, size).
# Returns one character per record: the claims window by window (in the order given), then
# the rejects: a(ccepted) d(uplicate) l(ate) r(ejected).
#
# The script decides only what must be decided on arrival: dedupe (one SMISMEMBER and one
# SADD per window), late vs. sealed, and the outcome counters. Everything a report derives
# from the claims is computed by the rollup from the log: per window the script writes one
# claims-stream entry (the batch's metas verbatim, the positions not accepted, the counts)
# and one payload-stream entry of the same id. Redis never parses a claim; the per-claim
# cost is a set member, and the per-batch cost a handful of calls.
APPEND: Final = (
    _layout_check(7)
    + r"""
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

local i = 8
local nwin = tonumber(ARGV[i]); i = i + 1
local wins = {}
for w = 1, nwin do
  wins[w] = {id = ARGV[i], from = ARGV[i + 1], to = ARGV[i + 2], members = ARGV[i + 3],
             metas = ARGV[i + 4], payloads = ARGV[i + 5], lengths = ARGV[i + 6],
             tps = ARGV[i + 7], repeats = ARGV[i + 8] == '1',
             p = prefix .. ':w:' .. ARGV[i] .. ':'}
  i = i + 9
end
local ncand = tonumber(ARGV[i]); i = i + 1
local cands = {}
for c = 1, ncand do cands[c] = tonumber(ARGV[i]); i = i + 1 end
local nrej = tonumber(ARGV[i]); i = i + 1
local rej_start = i

local function chunked(cmd, key, list, each)
  -- One call per 1,000 arguments at most (Lua's unpack has a stack limit).
  local n = #list
  for s = 1, n, 1000 do
    local reply = redis.call(cmd, key, unpack(list, s, math.min(s + 999, n)))
    if each then each(s, reply) end
  end
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

local counts = {}   -- window index -> entry count field (d, l, r:<reason>) -> increment
local function bump(w, field)
  local c = counts[w]
  if c == nil then c = {}; counts[w] = c end
  c[field] = (c[field] or 0) + 1
end
local totals = {}
local function total(field, n)
  totals[field] = (totals[field] or 0) + (n or 1)
end

local late_stream = prefix .. ':late'
local late_minid = tostring(now_ms - late_horizon_ms)
local dead_stream = prefix .. ':deadletter'

-- A late claim's payload and traceparent, cut from its window's arguments (rare path).
local function late_claim(win, k)
  if win.starts == nil then
    local lengths = cjson.decode(win.lengths)
    local starts, pos = {}, 1
    for j = 1, #lengths do starts[j] = {pos, pos + lengths[j] - 1}; pos = pos + lengths[j] end
    win.starts = starts
    win.tp_list = win.tps ~= '' and cjson.decode(win.tps) or {}
  end
  local span = win.starts[k]
  return string.sub(win.payloads, span[1], span[2]), win.tp_list[k] or ''
end

local out = {}
local accepted, skipped = {}, {}   -- window index -> accepted count, {0-based positions}
local n_accepted, n_duplicate, n_late = 0, 0, 0
for w = 1, nwin do
  local win = wins[w]
  local members = cjson.decode(win.members)
  local known, nknown = {}, 0
  chunked('SMISMEMBER', win.p .. 'dedupe', members, function(s, reply)
    for k = 1, #reply do
      if reply[k] == 1 then known[s + k - 1] = true; nknown = nknown + 1 end
    end
  end)
  local seen, fresh, codes, skip = {}, {}, {}, {}
  local closed = #members > 0 and is_sealed(w)
  local all_new = not closed and nknown == 0 and not win.repeats
  if all_new then
    -- The common case (no claim seen before, none repeated in the batch, the window open):
    -- every claim is accepted, without a step per claim.
    codes[1] = string.rep('a', #members)
    fresh = members
  end
  for k = 1, all_new and 0 or #members do
    local mem = members[k]
    local is_fresh = not (known[k] or seen[mem])
    if is_fresh then
      seen[mem] = true
      fresh[#fresh + 1] = mem
    end
    if closed then
      -- The window is sealed (its report is being or has been published): late.
      local t = target_window()
      local field = 'l'
      if is_fresh then n_late = n_late + 1 else field = 'd'; n_duplicate = n_duplicate + 1 end
      codes[k] = field
      if t > 0 then bump(t, field) else total('unassigned') end
      if is_fresh then
        local counted_in = ''
        if t > 0 then counted_in = wins[t].id end
        local payload, tp = late_claim(win, k)
        redis.call('XADD', late_stream, 'MINID', '~', late_minid, '*',
                   'window', win.id, 'counted_in', counted_in, 'c', payload, 'tp', tp)
      end
    elseif is_fresh then
      codes[k] = 'a'
    else
      codes[k] = 'd'
      n_duplicate = n_duplicate + 1
      bump(w, 'd')
      skip[#skip + 1] = k - 1
    end
  end
  out[#out + 1] = table.concat(codes)
  if not closed then
    accepted[w] = #members - #skip
    skipped[w] = skip
    n_accepted = n_accepted + accepted[w]
  end
  if #fresh > 0 then
    local dedupe = win.p .. 'dedupe'
    chunked('SADD', dedupe, fresh)
    -- A late claim may create the dedupe set of a reported window after its expiry was set:
    -- give it the window's remaining lifetime.
    if closed and redis.call('PTTL', dedupe) == -1 then
      local ttl = redis.call('PTTL', win.p .. 'agg')
      if ttl > 0 then redis.call('PEXPIRE', dedupe, ttl) end
    end
  end
end

for r = 1, nrej do
  local a = rej_start + (r - 1) * 6
  local t = target_window()
  local reason = ARGV[a]
  out[#out + 1] = 'r'
  total('rejected')
  total('rejected:' .. reason)
  local counted_in = ''
  if t > 0 then
    bump(t, 'r:' .. reason)
    counted_in = wins[t].id
  else
    total('unassigned')
  end
  redis.call('XADD', dead_stream, 'MAXLEN', '~', dl_maxlen, '*',
             'reason', reason, 'detail', ARGV[a + 1], 'payload', ARGV[a + 2],
             'tp', ARGV[a + 3], 'received_ns', ARGV[a + 4], 'size', ARGV[a + 5],
             'counted_in', counted_in)
end

-- One log entry per window the batch touched: its accepted claims and its counts.
local AGG_FIELD = {d = 'duplicate', l = 'late'}
for w = 1, nwin do
  local win = wins[w]
  local a, c = accepted[w] or 0, counts[w]
  if a > 0 or c then
    local fields = {}
    if a > 0 then
      fields[1] = 'm'; fields[2] = win.metas
      if #skipped[w] > 0 then fields[3] = 'x'; fields[4] = cjson.encode(skipped[w]) end
    end
    local agg = win.p .. 'agg'
    redis.call('HSET', agg, 'from_beat', win.from, 'to_beat', win.to)
    if c then
      for field, n in pairs(c) do
        fields[#fields + 1] = field
        fields[#fields + 1] = n
        local name = AGG_FIELD[field] or ('rejected:' .. string.sub(field, 3))
        redis.call('HINCRBY', agg, name, n)
      end
    end
    local id = redis.call('XADD', win.p .. 'claims', '*', unpack(fields))
    if a > 0 then
      redis.call('HINCRBY', agg, 'accepted', a)
      if win.tps ~= '' then
        redis.call('XADD', win.p .. 'payloads', id, 'p', win.payloads, 'n', win.lengths,
                   'tp', win.tps)
      else
        redis.call('XADD', win.p .. 'payloads', id, 'p', win.payloads, 'n', win.lengths)
      end
    end
    redis.call('ZADD', prefix .. ':windows', 'NX', win.from, win.id)
    if redis.call('HGET', agg, 'reported') ~= '1' then
      redis.call('ZADD', prefix .. ':windows:pending', 'NX', win.from, win.id)
    end
  end
end

local result = table.concat(out)
total('received', #result)
if n_accepted > 0 then total('accepted', n_accepted) end
if n_duplicate > 0 then total('duplicate', n_duplicate) end
if n_late > 0 then total('late', n_late) end
local totals_key = prefix .. ':ingest'
for field, n in pairs(totals) do redis.call('HINCRBY', totals_key, field, n) end

if batch_key then redis.call('SET', batch_key, result, 'EX', batch_ttl) end
return result
"""
)

# KEYS[1] = window aggregate hash. ARGV: prefix, window_id, from_beat, to_beat, now_ns, layout.
# Seals once (idempotent) and snapshots the pulse's beat stats into the aggregate, so a
# retried rollup reads exactly the same figures. Returns the aggregate hash as a flat list.
# From the seal on, the append script writes nothing more to the window's claims stream
# (its claims are late and logged in a later window), so the stream read after the seal
# is the window's final log.
SEAL: Final = (
    _layout_check(6)
    + r"""
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
return redis.call('HGETALL', agg)
"""
)

# KEYS[1] = window aggregate hash. ARGV: prefix, window_id, report_json, now_ns, now_ms,
# retention_ms, layout. Keeps the first report, seals the window if it somehow was not, starts the
# retention expiry of every key of the window and forgets windows whose retention has passed.
MARK_REPORTED: Final = (
    _layout_check(7)
    + r"""
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
  for _, suffix in ipairs({'agg', 'claims', 'payloads', 'dedupe', 'beats'}) do
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
)
