-- wrk script for every tragwerk benchmark. Each request picks at random a path from
-- PATHS_FILE (or takes TARGET_PATH) and a bearer token from TOKENS_FILE (or takes
-- TOKEN); with DELAY_MS set, each connection waits that long before its next request
-- (a paced client; latency counts from sending to the full response); at the end it
-- prints one JSON line with throughput, latency percentiles (microseconds) and error
-- counts.
local function lines(name)
  local found = {}
  for line in io.lines(name) do
    found[#found + 1] = line
  end
  return found
end

local paths = os.getenv("PATHS_FILE") and lines(os.getenv("PATHS_FILE")) or { os.getenv("TARGET_PATH") }
local tokens = os.getenv("TOKENS_FILE") and lines(os.getenv("TOKENS_FILE")) or { os.getenv("TOKEN") }
math.randomseed(tonumber(os.getenv("SEED") or "7"))

local delay_ms = tonumber(os.getenv("DELAY_MS") or "")
if delay_ms then
  delay = function()
    return delay_ms
  end
end

local method = os.getenv("METHOD") or "GET"
local body = os.getenv("BODY")
local sequential = os.getenv("SEQUENTIAL") ~= nil
local taken = 0

request = function()
  local path
  if sequential then
    taken = taken % #paths + 1
    path = paths[taken]
  else
    path = paths[math.random(#paths)]
  end
  local headers = { ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)] }
  if body then
    headers["Content-Type"] = "application/json"
  end
  return wrk.format(method, path, headers, body)
end

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"status_errors":%d,"connect_errors":%d,"read_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.timeout))
end
