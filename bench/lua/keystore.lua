-- wrk script driving the key store directly (bench/run.py passes the arguments after `--`).
--   wrk ... -s bench/lua/keystore.lua <url> -- <mode> <token> <n>
-- mode:
--   claim           POST /v1/claim on a fresh key each time (the claimed path)
--   claim_complete  a fresh claim, then the /v1/complete of that claim with the token it got (half
--                   claims, half completes). The answer to a claim carries no key, so this mode needs
--                   one connection per thread (wrk -t N -c N): then answers come in request order.
--   get             POST /v1/claim cycling over <n> keys completed beforehand (the "completed" path:
--                   what a replay from L2 costs the key store)
-- done() prints one line "BENCH_JSON {...}" with counts, latency percentiles (microseconds) and the
-- answers seen per outcome.

local threads = {}
local tid_counter = 0

function setup(thread)
   tid_counter = tid_counter + 1
   thread:set("tid", tid_counter)
   thread:set("seed", math.random(0, 2147483647))
   table.insert(threads, thread)
end

local mode, token, n
counter = 0
claimed = 0
completed = 0
stored = 0
other = 0
local last_key      -- the key of this thread's last claim (one connection per thread)
local pending       -- the token of that claim, once answered, until its /v1/complete is sent
local headers
local record = "YmVuY2htYXJrIHJlY29yZDogYSBzdG9yZWQgcmVzcG9uc2Ugb2YgYWJvdXQgb25lIGh1bmRyZWQgYW5kIGZpZnR5IGJ5dGVzLCBsaWtlIHRoZSBwYXltZW50cyBkZW1vJ3MgMjAxIGFuc3dlciB3aXRoIGl0cyBoZWFkZXJzLg=="
local fp = string.rep("ab", 32)

function init(args)
   mode = args[1] or "claim"
   token = args[2] or ""
   n = tonumber(args[3] or "200") or 200
   headers = { ["content-type"] = "application/json" }
   if token ~= "" then headers["authorization"] = "Bearer " .. token end
end

local function hexkey(i)
   -- 64 lowercase hex characters, distinct per (run seed, thread, i)
   return string.format("%016x%08x%08x%032x", seed or 0, tid or 0, 0, i)
end

local function post(path, body)
   return wrk.format("POST", path, headers, body)
end

function request()
   if mode == "claim_complete" and pending then
      local tok = pending
      pending = nil
      return post("/v1/complete", '{"key":"' .. last_key .. '","token":"' .. tok ..
         '","record":"' .. record .. '","retention_ms":600000}')
   end
   counter = counter + 1
   local k
   if mode == "get" then
      k = string.format("%064x", counter % n)
   else
      k = hexkey(counter)
   end
   last_key = k
   return post("/v1/claim", '{"key":"' .. k .. '","fingerprint":"' .. fp .. '","lease_ms":30000}')
end

function response(status, hdrs, body)
   if body == nil then other = other + 1; return end
   local tok = body:match('"outcome":"claimed","token":"([^"]+)"') or body:match('"token":"([^"]+)","outcome":"claimed"')
   if tok then
      claimed = claimed + 1
      if mode == "claim_complete" then pending = tok end
   elseif body:find('"stored"', 1, true) then
      stored = stored + 1
   elseif body:find('"completed"', 1, true) then
      completed = completed + 1
   else
      other = other + 1
   end
end

function done(summary, latency, requests)
   local c, s, g, o = 0, 0, 0, 0
   for _, t in ipairs(threads) do
      c = c + (t:get("claimed") or 0)
      s = s + (t:get("stored") or 0)
      g = g + (t:get("completed") or 0)
      o = o + (t:get("other") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f},' ..
      '"outcomes":{"claimed":%d,"stored":%d,"completed":%d,"other":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean, c, s, g, o))
end
