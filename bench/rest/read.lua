-- Read by id: GET {base}/{Type}/{id}, uniformly at random among the known ids.
-- wrk -s read.lua URL -- BASE_PATH IDS_FILE [AUTHORIZATION]
--   (IDS_FILE: one "Type/id" per line; AUTHORIZATION: an Authorization header value to send)
local common = require("common")
setup, response, done = common.setup, common.response, common.done

local paths
local headers = { ["Accept"] = "application/fhir+json" }

function init(args)
  errors = 0
  local base = args[1]
  paths = {}
  for _, p in ipairs(common.read_lines(args[2])) do
    table.insert(paths, base .. "/" .. p)
  end
  if args[3] then
    headers["Authorization"] = args[3]
  end
  math.randomseed(os.time() * 1000 + thread_id)
end

function request()
  return wrk.format("GET", paths[math.random(#paths)], headers)
end
