"use strict";
// The project's local ESLint plugin, registered as `local` in eslint.config.js.
module.exports = {
  meta: { name: "eslint-plugin-local" },
  rules: {
    layers: require("./layers.cjs"),
  },
};
