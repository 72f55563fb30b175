-- wrk script for the idempotency benchmark (bench/run.py passes the arguments after `--`).
--   wrk ... -s bench/lua/idem.lua <url> -- <method> <path> <mode> <n> <prefix> [<upstream delay ms>]
-- (a delay above 0 is sent as payments-demo's `x-demo-delay-ms`: a slow upstream, whose claims renew)
-- mode:
--   none   no Idempotency-Key header (baselines, not-covered requests)
--   fresh  a new key per request: <prefix>-<thread>-<counter>
--   cycle  <n> keys <prefix>-c-<i>, i = 0..n-1, cycled in order (every thread from its own offset)
--   replay the keys of an earlier `fresh` run with the same prefix: <prefix>-<thread>-<1 + counter % n>
--          (n: how many requests the run's threads each made at least)
--   storm  a few keys at once: <prefix>-s-<counter // n>; every thread walks the same sequence, so
--          about n requests (from all connections of both threads) share a key
-- done() prints one line "BENCH_JSON {...}" with the counts and latency percentiles (microseconds).

local threads = {}
local tid_counter = 0

function setup(thread)
   tid_counter = tid_counter + 1
   thread:set("tid", tid_counter)
   table.insert(threads, thread)
end

local method, path, mode, n, prefix
counter = 0 -- global: done() reads it per thread
local body = '{"amount":1250,"currency":"EUR","customer":"cus_bench","description":"idempotency benchmark"}'
local base_headers

function init(args)
   method = args[1] or "POST"
   path = args[2] or "/payments"
   mode = args[3] or "none"
   n = tonumber(args[4] or "200") or 200
   prefix = args[5] or "k"
   base_headers = {
      ["content-type"] = "application/json",
      ["authorization"] = "Bearer bench-caller",
   }
   local upstream_delay = tonumber(args[6] or "0") or 0
   if upstream_delay > 0 then base_headers["x-demo-delay-ms"] = tostring(upstream_delay) end
   if mode == "cycle" then
      -- spread the threads over the key ring so they do not walk it in lock step
      counter = ((tid or 1) - 1) * math.floor(n / 2)
   end
end

local function key()
   counter = counter + 1
   if mode == "fresh" then
      return prefix .. "-" .. tid .. "-" .. counter
   elseif mode == "cycle" then
      return prefix .. "-c-" .. (counter % n)
   elseif mode == "replay" then
      return prefix .. "-" .. tid .. "-" .. (1 + (counter - 1) % n)
   elseif mode == "storm" then
      return prefix .. "-s-" .. math.floor(counter / n)
   end
   return nil
end

function request()
   local h = {}
   for k, v in pairs(base_headers) do h[k] = v end
   local k = key()
   if k then h["idempotency-key"] = '"' .. k .. '"' end
   if method == "GET" then
      return wrk.format("GET", path, h, nil)
   end
   return wrk.format(method, path, h, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   local per_thread = {}
   for _, t in ipairs(threads) do table.insert(per_thread, tostring(t:get("counter") or 0)) end
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},' ..
      '"keys_per_thread":[%s]}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean, table.concat(per_thread, ",")))
end
