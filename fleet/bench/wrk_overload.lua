-- wrk script for the overload benchmark (fleet/bench/overload.py): the capacity script's paced
-- POSTs, plus a count of the answers by kind (served; shed: `overload`; deadline: the no-bid
-- HAProxy or the replica sends for a request its budget ran out on) and the share answered within tmax.
-- args: <bodies file> <mean delay ms per connection, 0: closed loop> <run nonce> <tmax ms>
local bodies, delay_ms, nonce, tid, tmax_us = {}, 0, "x", 0, 100000
local threads = {}
counter, shed, deadline, served, other = 0, 0, 0, 0, 0  -- globals: done() reads them per thread (thread:get)

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do bodies[#bodies + 1] = line end
  f:close()
  delay_ms = tonumber(args[2])
  nonce = args[3]
  tmax_us = tonumber(args[4]) * 1000
  math.randomseed(os.time() * 1000 + tid)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["x-openrtb-version"] = "2.6"
end

function request()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  body = string.gsub(body, "__ID__", nonce .. "-" .. tostring(tid) .. "-" .. tostring(counter), 1)
  return wrk.format(nil, nil, nil, body)
end

function delay()
  if delay_ms <= 0 then return 0 end
  return math.floor(-math.log(1 - math.random()) * delay_ms + 0.5)
end

function response(status, headers, body)
  local reason = headers["x-fleet-reason"]
  if reason == "overload" then
    shed = shed + 1
  elseif reason == "deadline" then
    deadline = deadline + 1
  elseif status == 200 or status == 204 then
    served = served + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local s, d, v, o = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("shed"); d = d + t:get("deadline"); v = v + t:get("served"); o = o + t:get("other")
  end
  -- the share of answers back within tmax: the percentile where latency crosses it
  local lo, hi = 0.0, 100.0
  if latency.max <= tmax_us then lo = 100.0 else
    for _ = 1, 30 do
      local mid = (lo + hi) / 2
      if latency:percentile(mid) <= tmax_us then lo = mid else hi = mid end
    end
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "shed": %d, "deadline": %d, "served": %d, "other": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"on_time_pct": %.3f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, s, d, v, o, e.connect, e.read, e.write, e.status, e.timeout,
    lo, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
