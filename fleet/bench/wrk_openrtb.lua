-- wrk script for `fleet bench capacity`: POSTs OpenRTB bodies with unique ids at a paced rate.
-- args: <bodies file> <mean delay ms per connection> <run nonce>
-- Delays are exponential (each connection a Poisson source): equal fixed delays would keep all
-- connections in lockstep and turn a paced load into bursts of one request per connection.
-- Each body line holds "__ID__" where the request id goes; ids are unique per thread and run.
local bodies, n, delay_ms, nonce, tid = {}, 0, 0, "x", 0
local threads = {}
local counter = 0

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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
