-- Shared by the REST benchmark scenarios (scripts/bench-rest.sh). wrk runs one Lua state per
-- thread plus a main one for setup/done; each thread counts its non-2xx answers in `errors`.
local M = {}

local threads = {}
local next_id = 0

-- setup(thread), in the main state: number the threads and keep them for done().
function M.setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
  table.insert(threads, thread)
end

-- response(status, headers, body), per thread.
function M.response(status, headers, body)
  if status < 200 or status > 299 then
    errors = errors + 1
    if errors <= 3 then
      io.stderr:write(string.format("non-2xx answer %d: %s\n", status, string.sub(body or "", 1, 300)))
    end
  end
end

-- done(summary, latency, requests), in the main state: one machine-readable line.
function M.done(summary, latency, requests)
  local non2xx = 0
  for _, t in ipairs(threads) do
    non2xx = non2xx + (t:get("errors") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    non2xx, e.connect + e.read + e.write + e.timeout))
end

function M.read_lines(path)
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then table.insert(out, line) end
  end
  return out
end

function M.read_file(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("*a")
  f:close()
  return (text:gsub("%s+$", ""))
end

M.json_headers = { ["Content-Type"] = "application/fhir+json", ["Accept"] = "application/fhir+json" }

return M
