-- wrk script: requests spread over N tasks (/t/0 .. /t/N-1) with a Zipf distribution
-- (exponent S): a few hot tasks and a long cold tail. N and S come from the environment.
local n = tonumber(os.getenv("ZIPF_TASKS") or "1000")
local s = tonumber(os.getenv("ZIPF_EXPONENT") or "1.1")
local cdf = {}

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

function request()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/t/" .. (lo - 1))
end
