-- idem.lua at a fixed rate (Debian has no wrk2): wrk asks delay() before every request, and each
-- call takes the next slot of this thread's schedule, one every 1000 / <rate per thread> ms.
--   wrk ... -s bench/lua/paced.lua <url> -- <method> <path> <mode> <n> <prefix> <upstream delay ms> <rate per thread>
-- A thread that falls behind its schedule sends at once until it catches up, so a rate the target
-- cannot sustain shows as an achieved rate below the one asked for (run.py checks it). Latency is
-- wrk's: from the moment a request is written, not from its slot.

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "idem.lua")

local ffi = require("ffi")
ffi.cdef [[
   typedef struct { long tv_sec; long tv_nsec; } paced_timespec;
   int clock_gettime(int clock_id, paced_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("paced_timespec")

local function now_ms()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
   return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local idem_init = init
local interval_ms, next_slot

function init(args)
   idem_init(args)
   local rate = tonumber(args[7] or "0") or 0
   interval_ms = rate > 0 and 1000 / rate or 0
end

function delay()
   local now = now_ms()
   next_slot = next_slot or now
   local slot = next_slot
   next_slot = next_slot + interval_ms
   if slot <= now then return 0 end
   return math.floor(slot - now + 0.5)
end
