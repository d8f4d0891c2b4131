-- wrk script: requests spread over N tasks (/t/0 .. /t/N-1) with a Zipf distribution
-- (exponent S): a few hot tasks and a long cold tail. N and S come from the environment.
--
-- With ZIPF_RATE set (requests/s), requests are sent on a fixed schedule instead of as fast
-- as the connections allow, so every server is offered the same load: each request takes
-- the next free slot of the schedule (1/RATE apart) and waits for it. Latency is measured
-- from when the request is sent; keep the connection count above RATE x the slowest
-- response time, or the schedule slips (the achieved requests/s then shows it).
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } poplar_timespec;
int clock_gettime(int clk_id, poplar_timespec *tp);
]]

local n = tonumber(os.getenv("ZIPF_TASKS") or "1000")
local s = tonumber(os.getenv("ZIPF_EXPONENT") or "1.1")
local rate = tonumber(os.getenv("ZIPF_RATE") or "0")
local cdf = {}
local ts = ffi.new("poplar_timespec")
local next_slot = 0

local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  local total = 0
  for k = 1, n do total = total + 1 / (k ^ s) end
  local acc = 0
  for k = 1, n do
    acc = acc + (1 / (k ^ s)) / total
    cdf[k] = acc
  end
end

if rate > 0 then
  function delay()
    local now = now_ms()
    local slot = math.max(next_slot, now)
    next_slot = slot + 1000 / rate
    return math.floor(slot - now)
  end
end

function request()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/t/" .. (lo - 1))
end
