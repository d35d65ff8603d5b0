// The stock client's own User-Agent value (its internal helper, so the expectation follows the
// installed client version exactly).

import utils from '@microsoft/signalr/dist/cjs/Utils.js';

/** [headerName, value] as the stock client sends it (Node: ['User-Agent', 'Microsoft SignalR/...']). */
export function getUserAgentHeaderSafe() {
  return utils.getUserAgentHeader();
}
