-- A limit's reset generation, as every quota script reads it (reserve, settle, undo and
-- the management API's reset; script_numbers.script_generation in Python): an integer
-- as the reset's HINCRBY writes it, without a leading 0, up to 2^53 - 1 (what these
-- doubles compare exactly); absent (false from HGET), 0. nil for anything else: '1.5',
-- '01', ' 2', '2e0', '0x2', all numbers to Lua's tonumber, which the settle and undo
-- scripts used while the reserve script refused them. Prepended to each script that
-- reads a generation (extproc/store/scripts.py): Redis scripts cannot share code.
local function reset_generation(value)
  if not value then
    return 0
  end
  if value ~= '0' and not string.match(value, '^%-?[1-9]%d*$') then
    return nil
  end
  local number = tonumber(value)
  if math.abs(number) > 9007199254740991 then
    return nil
  end
  return number
end
local UNREADABLE_GENERATION = ' holds a reset generation that is no integer up to 2^53 - 1'
