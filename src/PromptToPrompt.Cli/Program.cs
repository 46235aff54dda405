Console.WriteLine("p2p");
