// Starts GraphiQL on this hub's endpoints (read from the page's #graphiql element). Served from
// the binary like every other GraphiQL asset: the page loads nothing from elsewhere.
(function () {
  "use strict";
  var root = document.getElementById("graphiql");
  function url(path, socket) {
    var u = new URL(path, window.location.origin);
    if (socket) {
      u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    }
    return u.toString();
  }
  var fetcher = GraphiQL.createFetcher({
    url: url(root.getAttribute("data-endpoint")),
    subscriptionUrl: url(root.getAttribute("data-subscription-endpoint"), true),
    fetch: function (input, init) {
      return fetch(input, Object.assign({}, init, { credentials: "same-origin" }));
    },
  });
  ReactDOM.createRoot(root).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
    })
  );
})();
