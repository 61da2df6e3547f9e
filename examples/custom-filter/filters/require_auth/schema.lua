-- Checked by nuncio when the chain is built: a bad config is a config error.
return {
  validate = function(config)
    if config.exempt ~= nil then
      if type(config.exempt) ~= "table" then
        return false, "exempt must be a list of path prefixes"
      end
      for i, p in ipairs(config.exempt) do
        if type(p) ~= "string" or p:sub(1, 1) ~= "/" then
          return false, "exempt[" .. i .. "] must be a path prefix starting with /"
        end
      end
    end
    return true
  end,
}
