// A packet-level run of a trainlab `fabric` flow case in ns-3 (the packet-level peer of issue 10).
//
// Input (file named by the first argument), written by tests/fabric_peers.rs from `trainlab_sim::fabric::flow_case`:
//   rate_bps R            every link's rate, bits per second
//   delay_s D             every link's propagation delay, seconds
//   links N               then N lines: <directed link id> <from node> <to node>
//   flows M               then M lines: <bytes> <hops> <link id> ... (the flow's directed links, source to sink)
// Every physical link (directed ids 2p and 2p+1) is a full-duplex point-to-point link. Each flow is one TCP
// connection (BulkSend to a PacketSink), started at time zero; its path is pinned by static host routes to its sink's
// address at every node on the way (and its ACKs by routes to its source along the reverse path), so a case must give
// every flow its own source and sink address (one NIC, one port, one channel). Output: one line per flow,
// `flow <i> <completion seconds>`, then `wall <seconds>`.
#include "ns3/applications-module.h"
#include "ns3/core-module.h"
#include "ns3/internet-module.h"
#include "ns3/network-module.h"
#include "ns3/point-to-point-module.h"
#include "ns3/traffic-control-module.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

using namespace ns3;

// DCTCP's marking threshold K, packets of 9,000 bytes (about 65 standard packets at 10 Gb/s in the DCTCP paper,
// scaled up with the rate; the result is not sensitive to it here).
static const double kMarkPackets = 40;

struct Dir
{
    Ptr<Node> from;
    uint32_t from_if;  // interface index on `from`
    Ipv4Address from_addr;
    Ipv4Address to_addr;
    uint32_t to_if;
    Ptr<Node> to;
};

static std::vector<double> g_done;
static std::vector<uint64_t> g_got;
static std::vector<uint64_t> g_want;

static void
OnRx(uint32_t flow, Ptr<const Packet> p, const Address&)
{
    g_got[flow] += p->GetSize();
    if (g_done[flow] < 0 && g_got[flow] >= g_want[flow])
    {
        g_done[flow] = Simulator::Now().GetSeconds();
    }
}

static void
Fail(const std::string& why)
{
    std::cerr << "ns3_fabric: " << why << std::endl;
    std::exit(2);
}

int
main(int argc, char** argv)
{
    if (argc != 2)
    {
        Fail("usage: ns3_fabric CASE");
    }
    auto t0 = std::chrono::steady_clock::now();
    std::ifstream in(argv[1]);
    std::string key;
    double rate = 0, delay = 0;
    size_t nlinks = 0, nflows = 0;
    in >> key >> rate >> key >> delay >> key >> nlinks;
    std::map<uint32_t, std::pair<std::string, std::string>> ends;
    for (size_t i = 0; i < nlinks; ++i)
    {
        uint32_t id;
        std::string a, b;
        in >> id >> a >> b;
        ends[id] = {a, b};
    }
    in >> key >> nflows;
    std::vector<std::vector<uint32_t>> paths(nflows);
    g_want.assign(nflows, 0);
    for (size_t f = 0; f < nflows; ++f)
    {
        size_t hops;
        in >> g_want[f] >> hops;
        paths[f].resize(hops);
        for (auto& l : paths[f])
        {
            in >> l;
        }
    }
    if (!in)
    {
        Fail("malformed case file");
    }

    // Jumbo frames (9,000-byte MTU, as RDMA fabrics run 4-9 KB frames): fewer packets to simulate.
    Config::SetDefault("ns3::TcpSocket::SegmentSize", UintegerValue(8948));
    // DCTCP (Alizadeh et al. 2010), the datacenter congestion control closest to RoCE's DCQCN, with ECN marking at
    // K packets of queue.
    Config::SetDefault("ns3::TcpL4Protocol::SocketType", TypeIdValue(TcpDctcp::GetTypeId()));
    Config::SetDefault("ns3::TcpSocket::SndBufSize", UintegerValue(1 << 24));
    Config::SetDefault("ns3::TcpSocket::RcvBufSize", UintegerValue(1 << 24));

    std::map<std::string, Ptr<Node>> nodes;
    auto node = [&](const std::string& name) {
        auto it = nodes.find(name);
        if (it != nodes.end())
        {
            return it->second;
        }
        Ptr<Node> n = CreateObject<Node>();
        nodes[name] = n;
        return n;
    };
    for (auto& [id, e] : ends)
    {
        node(e.first);
        node(e.second);
    }
    InternetStackHelper stack;
    for (auto& [name, n] : nodes)
    {
        stack.Install(n);
    }
    PointToPointHelper p2p;
    p2p.SetDeviceAttribute("DataRate", DataRateValue(DataRate(uint64_t(rate))));
    p2p.SetChannelAttribute("Delay", TimeValue(Seconds(delay)));
    p2p.SetDeviceAttribute("Mtu", UintegerValue(9000));
    p2p.SetQueue("ns3::DropTailQueue<Packet>", "MaxSize", StringValue("4p"));
    TrafficControlHelper tch;
    tch.SetRootQueueDisc("ns3::RedQueueDisc",
                         "UseEcn", BooleanValue(true),
                         "UseHardDrop", BooleanValue(false),
                         "MeanPktSize", UintegerValue(9000),
                         "QW", DoubleValue(1.0),
                         "MinTh", DoubleValue(kMarkPackets),
                         "MaxTh", DoubleValue(kMarkPackets),
                         "MaxSize", QueueSizeValue(QueueSize("400p")),
                         "LinkBandwidth", DataRateValue(DataRate(uint64_t(rate))),
                         "LinkDelay", TimeValue(Seconds(delay)));
    Ipv4AddressHelper addr("10.0.0.0", "255.255.255.252");
    std::map<uint32_t, Dir> dirs;  // directed link id -> its ends
    std::set<uint32_t> phys;
    for (auto& [id, e] : ends)
    {
        phys.insert(id / 2);
    }
    for (uint32_t p : phys)
    {
        // The physical link's two ends, from whichever direction the case lists.
        std::string lo, hi;
        if (ends.count(2 * p))
        {
            lo = ends[2 * p].first;
            hi = ends[2 * p].second;
        }
        else
        {
            lo = ends[2 * p + 1].second;
            hi = ends[2 * p + 1].first;
        }
        NetDeviceContainer d = p2p.Install(nodes[lo], nodes[hi]);
        Ipv4InterfaceContainer ifs = addr.Assign(d);
        addr.NewNetwork();
        // Every port an ECN-marking queue (RED with one threshold, instantaneous: DCTCP's marking rule) in front of a
        // short device queue, so queues stay short and a flow's ACKs do not wait behind a megabyte of the reverse
        // direction's data.
        tch.Uninstall(d);
        tch.Install(d);
        uint32_t if_lo = nodes[lo]->GetObject<Ipv4>()->GetInterfaceForDevice(d.Get(0));
        uint32_t if_hi = nodes[hi]->GetObject<Ipv4>()->GetInterfaceForDevice(d.Get(1));
        dirs[2 * p] = Dir{nodes[lo], if_lo, ifs.GetAddress(0), ifs.GetAddress(1), if_hi, nodes[hi]};
        dirs[2 * p + 1] = Dir{nodes[hi], if_hi, ifs.GetAddress(1), ifs.GetAddress(0), if_lo, nodes[lo]};
    }

    Ipv4StaticRoutingHelper sr;
    std::set<uint32_t> sinks, sources;
    g_done.assign(nflows, -1.0);
    g_got.assign(nflows, 0);
    for (size_t f = 0; f < nflows; ++f)
    {
        const auto& path = paths[f];
        const Dir& first = dirs.at(path.front());
        const Dir& last = dirs.at(path.back());
        Ipv4Address src = first.from_addr, dst = last.to_addr;
        if (!sinks.insert(dst.Get()).second || !sources.insert(src.Get()).second)
        {
            Fail("two flows share a source or a sink address: give each flow its own NIC");
        }
        for (size_t h = 0; h < path.size(); ++h)
        {
            const Dir& d = dirs.at(path[h]);
            if (h + 1 < path.size() && dirs.at(path[h + 1]).from != d.to)
            {
                Fail("a path is not a chain of links");
            }
            // Data towards the sink, ACKs back towards the source on the reverse link.
            sr.GetStaticRouting(d.from->GetObject<Ipv4>())->AddHostRouteTo(dst, d.to_addr, d.from_if);
            sr.GetStaticRouting(d.to->GetObject<Ipv4>())->AddHostRouteTo(src, d.from_addr, d.to_if);
        }
        uint16_t port = 5000;
        PacketSinkHelper sink("ns3::TcpSocketFactory", InetSocketAddress(Ipv4Address::GetAny(), port));
        ApplicationContainer sa = sink.Install(last.to);
        sa.Get(0)->TraceConnectWithoutContext("Rx", MakeBoundCallback(&OnRx, uint32_t(f)));
        sa.Start(Seconds(0));
        BulkSendHelper send("ns3::TcpSocketFactory", InetSocketAddress(dst, port));
        send.SetAttribute("MaxBytes", UintegerValue(g_want[f]));
        send.SetAttribute("SendSize", UintegerValue(1 << 16));
        ApplicationContainer ca = send.Install(first.from);
        ca.Start(Seconds(0));
    }
    Simulator::Run();
    Simulator::Destroy();
    auto t1 = std::chrono::steady_clock::now();
    for (size_t f = 0; f < nflows; ++f)
    {
        if (g_done[f] < 0)
        {
            Fail("flow " + std::to_string(f) + " did not complete");
        }
        std::printf("flow %zu %.9f\n", f, g_done[f]);
    }
    std::printf("wall %.6f\n", std::chrono::duration<double>(t1 - t0).count());
    return 0;
}
