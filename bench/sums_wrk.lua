-- Load for the sums benchmark: 90 % new keys, 10 % repeats of a recent key (often still in flight).
-- Env: SUMS_TAG (key namespace, one per wrk process), SUMS_REQUESTS (stop after this many answers).
-- A key's number is a function of its index, so a repeat always sends the same number.
local tag = os.getenv("SUMS_TAG") or "w"
local limit = tonumber(os.getenv("SUMS_REQUESTS") or "10000")
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  issued, answered, next_key = 0, 0, 0
  ok, replayed, busy, other = 0, 0, 0, 0
  math.randomseed(os.time() + #tag)
end

local function number_of(index)
  return index % 997 + 1
end

function request()
  issued = issued + 1
  local index
  if next_key > 50 and math.random() < 0.10 then
    index = next_key - math.random(0, 49)
  else
    next_key = next_key + 1
    index = next_key
  end
  return wrk.format("GET", "/sum?number=" .. number_of(index) .. "&ikey=" .. tag .. "-" .. index)
end

function response(status, headers, body)
  answered = answered + 1
  if status == 200 then
    ok = ok + 1
    if headers["idempotent-replayed"] or headers["Idempotent-Replayed"] then replayed = replayed + 1 end
  elseif status == 409 then
    busy = busy + 1
  else
    other = other + 1
  end
  if answered == limit then
    -- tell the harness (it waits on stderr, no polling) and stop sending; it then interrupts wrk's main thread
    io.stderr:write("DONE\n")
    io.stderr:flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local t = {ok = 0, replayed = 0, busy = 0, other = 0}
  for _, thread in ipairs(threads) do
    t.ok = t.ok + thread:get("ok")
    t.replayed = t.replayed + thread:get("replayed")
    t.busy = t.busy + thread:get("busy")
    t.other = t.other + thread:get("other")
  end
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"ok": %d, "replayed": %d, "busy_409": %d, "other": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    t.ok, t.replayed, t.busy, t.other,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
