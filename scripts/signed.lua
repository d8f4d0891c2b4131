-- wrk: asks a region for /forwarded?name=wrk as an edge would, each request signed once (a
-- region refuses a signature it has seen). The signatures come from SIGNED_FILE, one
-- "timestamp request-id signature" per line, made by scripts/bench.sh just before the run.
local stamps, ids, sigs = {}, {}, {}
local i = 0
local empty_body = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

function init(args)
  for line in io.lines(os.getenv("SIGNED_FILE")) do
    local ts, id, sig = line:match("(%S+) (%S+) (%S+)")
    stamps[#stamps + 1], ids[#ids + 1], sigs[#sigs + 1] = ts, id, sig
  end
end

function request()
  i = i % #sigs + 1
  return wrk.format("GET", "/forwarded?name=wrk", {
    ["x-poplar-task"] = "hello",
    ["x-poplar-timestamp"] = stamps[i],
    ["x-poplar-request-id"] = ids[i],
    ["x-poplar-body-sha256"] = empty_body,
    ["x-poplar-signature"] = sigs[i],
  })
end
