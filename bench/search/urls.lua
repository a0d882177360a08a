-- Search benchmark (scripts/bench-search.sh): GET the request paths listed in a file, one
-- after the other per thread, starting at a different offset in each thread.
package.path = "bench/rest/?.lua;" .. package.path
local common = require("common")

errors = 0
local paths = {}
local i = 0

setup = common.setup
response = common.response
done = common.done

function init(args)
  paths = common.read_lines(args[1])
  i = (thread_id or 1) * 7919
end

function request()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1], { ["Accept"] = "application/fhir+json" })
end
